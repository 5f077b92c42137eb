"""Section "Map": the whole population at a glance, labelled a cluster at a time.

Every particle is a point of a 2D map of its embedding (the current encoder's features:
the fine-tuned classifier's when there is one, else the pretrained encoder's, else random
weights with a warning). The map is linked both ways with the viewer: a click on a
point centres the viewer on that particle and selects it; particles selected in the
points layer are ringed on the map. A lasso or a rectangle on the map selects
particles; "Label selection" gives them the current class in one undoable action,
saved through the annotation store like every other label. Clusters (HDBSCAN, or
k-means with a number) become classes with one click. While the user labels, an
instant classifier (logistic regression on the embeddings, `population.InstantClassifier`)
re-predicts every particle, so the map coloured by "instant predictions" follows each
click (kept apart from the fine-tuned classifier's predictions, which it never replaces);
"Suggest" lists the particles most worth labelling next and steps the viewer through
them; the gallery shows central slices of the selected particles.

The plot is `_map_canvas.MapCanvas`, a matplotlib canvas (a core dependency) with
matplotlib's own lasso and rectangle selectors; embedding, the 2D map and the clusters
run in a worker.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import (
    ElidedLabel,
    RunPanel,
    StatusLine,
    compact_combo,
    enclosing_scroll_area,
    notify_error,
)
from napari_cryossl._widgets._helper_process import HelperProcess
from napari_cryossl._widgets._layer_sync import show_markers
from napari_cryossl._widgets._map_canvas import MapCanvas
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._workers import generator_worker
from napari_cryossl.analysis.population import EmbedSettings, SuggestSettings
from napari_cryossl.base.options import DEVICE_CHOICES, describe
from napari_cryossl.particles.colors import class_color_table

#: Particles shown at most in the gallery (central slices).
GALLERY_MAX = 48
GALLERY_TILE_PX = 56
RANDOM_WEIGHTS_WARNING = (
    "no encoder yet: the map uses random weights and shows only crude differences of "
    "size and density; pretrain (step 4) for a map worth labelling from"
)
_UNLABELLED = (0.72, 0.72, 0.72, 0.55)
_NOISE = (0.55, 0.55, 0.55, 0.5)


class PopulationWidget(QWidget):
    """The embedding map, its selections, clusters, instant predictions and suggestions."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.worker = None
        self.suggest_worker = None
        self.embeddings: np.ndarray | None = None
        self.coords: np.ndarray | None = None
        self.clusters: np.ndarray | None = None
        self.selection = np.zeros(0, np.int64)
        self.suggestions: list[int] = []
        self.suggestion_pos = -1
        self.undo_stack: list[tuple[np.ndarray, np.ndarray]] = []
        self._zyx: np.ndarray | None = None  # particle positions the map was made for
        self._last_labels: np.ndarray | None = None
        self._updating = False
        self._watched_layer = None
        self.instant_seconds = float("nan")
        #: the instant classifier's (class numbers, probabilities), one per particle
        self.instant_predictions: tuple[np.ndarray, np.ndarray] | None = None
        self.helper = HelperProcess()  # maps and clusters off the GIL (started on first map)

        layout = QVBoxLayout(self)
        form = QFormLayout()
        # a checkpoint's name cannot wrap: elided, whole in the tooltip
        self.model_label = ElidedLabel("")
        form.addRow("Model:", self.model_label)
        self.map_method = compact_combo(QComboBox())
        spec = describe(EmbedSettings, "map")
        self.map_method.addItems(spec.choices)
        self.map_method.setCurrentText(spec.default)
        self.map_method.setToolTip(spec.tooltip())
        form.addRow("Map:", self.map_method)
        self.n_clusters = QSpinBox()
        self.n_clusters.setRange(0, 100)
        self.n_clusters.setSpecialValueText("auto (HDBSCAN)")
        self.n_clusters.setToolTip(describe(EmbedSettings, "clusters").tooltip())
        form.addRow("Clusters:", self.n_clusters)
        self.device = compact_combo(QComboBox())
        self.device.addItems(DEVICE_CHOICES)
        self.device.setCurrentText(describe(EmbedSettings, "device").default)
        self.device.setToolTip(describe(EmbedSettings, "device").tooltip())
        form.addRow("Device:", self.device)
        layout.addLayout(form)
        self.panel = RunPanel("Compute map", resumable=False, plot=False)
        layout.addWidget(self.panel)

        # two rows: side by side, napari's styled combo boxes overflow a dock's width
        view_form = QFormLayout()
        self.color_by = compact_combo(QComboBox())
        self.color_by.addItems(["labels", "predictions", "instant predictions", "clusters"])
        self.color_by.setItemData(
            1, "the classifier's predictions (Prediction section)", Qt.ItemDataRole.ToolTipRole
        )
        self.color_by.setItemData(
            2,
            "the instant classifier's guesses from the labels so far (never saved, never "
            "replacing the classifier's predictions)",
            Qt.ItemDataRole.ToolTipRole,
        )
        view_form.addRow("Colour by:", self.color_by)
        self.select_mode = compact_combo(QComboBox())
        self.select_mode.addItems(["lasso", "rectangle"])
        view_form.addRow("Select:", self.select_mode)
        layout.addLayout(view_form)
        self.canvas = MapCanvas(self)
        layout.addWidget(self.canvas, 1)

        row = QHBoxLayout()
        self.label_button = QPushButton("Label selection")
        self.label_button.setToolTip("Give the particles selected on the map the current class")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Take back the last labelling done from the map")
        row.addWidget(self.label_button, 1)
        row.addWidget(self.undo_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Cluster:"))
        self.cluster_choice = QSpinBox()
        self.cluster_choice.setRange(1, 1)
        row.addWidget(self.cluster_choice)
        self.cluster_button = QPushButton("New class")
        self.cluster_button.setToolTip("A new class holding every particle of this cluster")
        row.addWidget(self.cluster_button, 1)
        layout.addLayout(row)
        self.instant = QCheckBox("Instant predictions while labelling")
        self.instant.setChecked(True)
        self.instant.setToolTip(
            "After each label, a logistic regression on the embeddings re-predicts every "
            "particle (until the next fine-tune)"
        )
        layout.addWidget(self.instant)
        # Every row fits the dock at every step: the spin box and the strategy on one
        # row, the buttons on the next, the (wrapped) line about the current suggestion
        # under them.
        suggest_form = QFormLayout()
        suggest_row = QHBoxLayout()
        self.n_suggest = QSpinBox()
        self.n_suggest.setRange(1, 1000)
        self.n_suggest.setValue(describe(SuggestSettings, "n").default)
        self.n_suggest.setToolTip(describe(SuggestSettings, "n").tooltip())
        self.suggest_strategy = compact_combo(QComboBox())
        spec = describe(SuggestSettings, "strategy")
        self.suggest_strategy.addItems(spec.choices)
        self.suggest_strategy.setCurrentText(spec.default)
        self.suggest_strategy.setToolTip(spec.tooltip())
        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.setMinimumWidth(60)
        self.suggest_button.setToolTip(
            "The unlabelled particles worth labelling next: typical particles of the "
            "groups the instant classifier is least certain about"
        )
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("Centre the viewer on the next suggested particle")
        self.suggestion_label = QLabel("")
        self.suggestion_label.setWordWrap(True)
        suggest_row.addWidget(self.n_suggest)
        suggest_row.addWidget(self.suggest_strategy, 1)
        suggest_form.addRow("Suggest:", suggest_row)
        layout.addLayout(suggest_form)
        row = QHBoxLayout()
        row.addWidget(self.suggest_button, 1)
        row.addWidget(self.next_button, 1)
        layout.addLayout(row)
        layout.addWidget(self.suggestion_label)
        self.gallery_button = QPushButton("Gallery of the selection")
        self.gallery_button.setToolTip(
            f"Central slices of up to {GALLERY_MAX} selected particles (or of the chosen "
            "cluster); click one to go there"
        )
        layout.addWidget(self.gallery_button)
        self.gallery = QWidget()
        self.gallery_grid = QGridLayout(self.gallery)
        self.gallery_grid.setSpacing(2)
        layout.addWidget(self.gallery)
        self.status = StatusLine()
        layout.addWidget(self.status)

        self.panel.start_requested.connect(self.start)
        self.panel.cancel_requested.connect(self.cancel)
        self.color_by.currentTextChanged.connect(lambda _t: self.recolor())
        self.select_mode.currentTextChanged.connect(self.canvas.set_mode)
        self.canvas.selected.connect(self.select)
        self.canvas.clicked.connect(self.go_to)
        self.label_button.clicked.connect(lambda: self.label_selection())
        self.undo_button.clicked.connect(self.undo)
        self.cluster_button.clicked.connect(lambda: self.class_from_cluster())
        self.suggest_button.clicked.connect(lambda: self.suggest())
        self.next_button.clicked.connect(self.next_suggestion)
        self.gallery_button.clicked.connect(lambda: self.show_gallery())
        session.particles_changed.connect(self._on_particles_changed)
        session.classes_changed.connect(self.recolor)
        session.models_changed.connect(self._show_model)
        session.tomogram_changed.connect(self._on_tomogram)
        self._show_model()
        self._update_ready()

    # model ------------------------------------------------------------------------
    def model_path(self):
        """The checkpoint the map embeds with: the classifier, else the encoder, else None."""
        for path in (self.session.classifier_path, self.session.encoder_path):
            if path is not None and path.is_file():
                return path
        return None

    def _show_model(self) -> None:
        path = self.model_path()
        self.model_label.setText(path.name if path is not None else "random weights (no encoder yet)")
        self.model_label.setToolTip(str(path) if path is not None else RANDOM_WEIGHTS_WARNING)

    # compute ----------------------------------------------------------------------
    def start(self):
        """Embed every particle, map and cluster them in a worker; returns it (or None)."""
        from napari_cryossl.io import InputError, particle_zyx

        if self.worker is not None:
            return None
        try:
            self.session.require_tomogram()
            table = self.session.store.table
            if len(table) < 3:
                raise InputError("the map needs at least 3 particles: pick some in step 2")
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        tomo, model = self.session.tomogram, self.model_path()
        device, method = self.device.currentText(), self.map_method.currentText()
        n_clusters = self.n_clusters.value() or None
        box_default = self.session.box_size or 32
        zyx = particle_zyx(table).copy()

        def job():
            import torch

            from napari_cryossl.analysis.population import EmbedSettings
            from napari_cryossl.nn.models import build_encoder
            from napari_cryossl.ops.embed import embed

            source = model
            if model is None:  # random weights, fixed seed: the same map every time
                torch.manual_seed(0)
                source = build_encoder("rb3d-small", box_size=box_default)
            # the map and clusters in the helper process: HDBSCAN and UMAP's numba code
            # hold the GIL for hundreds of milliseconds, which would freeze the viewer
            result = yield from embed(
                source,
                [(table, tomo)],
                settings=EmbedSettings(map=method, clusters=n_clusters, device=device),
                elsewhere=self.helper.call,
            )
            return result.embeddings, result.coords, result.method, result.clusters, zyx

        worker = generator_worker(job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.errored.connect(lambda exc: self.status.error(notify_error(exc)))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.panel.reset("extracting subtomograms…")
        self.panel.set_running(True)
        self.status.info("embedding every particle in the background…")
        self.session.start_worker(worker)
        return worker

    def _on_progress(self, item) -> None:
        if isinstance(item, str):
            self.panel.reset(item)
        elif item is not None:
            self.panel.update_status(item)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_result(self, result) -> None:
        if result is None:
            return
        embeddings, coords, method, groups, zyx = result
        from napari_cryossl.io import particle_zyx

        if len(self.session.store.table) != len(zyx) or not np.allclose(
            particle_zyx(self.session.store.table), zyx
        ):
            self.status.error(notify_error("particles changed while mapping: compute the map again"))
            return
        self.embeddings, self.coords, self.clusters, self._zyx = embeddings, coords, groups, zyx
        self.selection = np.zeros(0, np.int64)
        self.suggestions, self.suggestion_pos = [], -1
        self._last_labels = None
        # positions now; the colours once, after the instant classifier (if any) has run
        self.canvas.set_points(coords)
        n_groups = int(groups.max()) if len(groups) else 0
        self.cluster_choice.setRange(1, max(n_groups, 1))
        self._watch_points_layer()
        note = "" if self.model_path() is not None else f" · {RANDOM_WEIGHTS_WARNING}"
        self.status.info(
            f"{len(coords)} particles mapped ({method.upper()}, {n_groups} clusters){note}"
        )
        self._on_particles_changed()  # predicts instantly and paints the points
        self._update_ready()

    def _on_finished(self) -> None:
        self.worker = None
        self.panel.set_running(False)
        self.panel.progress.setFormat("done" if self.coords is not None else "idle")
        self._update_ready()

    def _update_ready(self) -> None:
        ready = self.coords is not None
        for button in (self.label_button, self.cluster_button, self.suggest_button,
                       self.gallery_button):
            button.setEnabled(ready)
            if not ready:
                button.setToolTip("compute the map first")
        if self.suggest_worker is not None:
            self.suggest_button.setEnabled(False)
        self.undo_button.setEnabled(bool(self.undo_stack))
        self.next_button.setEnabled(bool(self.suggestions))

    def _on_tomogram(self) -> None:
        self._forget("")
        self._show_model()

    def _forget(self, message: str) -> None:
        self.embeddings = self.coords = self.clusters = self._zyx = None
        self.selection = np.zeros(0, np.int64)
        self.suggestions, self.suggestion_pos, self.undo_stack = [], -1, []
        self.canvas.set_points(np.zeros((0, 2)), np.zeros((0, 4)))
        self.canvas.draw_idle()
        if message:
            self.status.info(message)
        self._update_ready()

    # colours ----------------------------------------------------------------------
    def _colors(self) -> np.ndarray:
        store = self.session.store
        n = 0 if self.coords is None else len(self.coords)
        colors = np.tile(np.array(_UNLABELLED), (n, 1))
        if store is None or n == 0 or len(store.table) != n:
            return colors
        mode = self.color_by.currentText()
        if mode == "clusters" and self.clusters is not None:
            from matplotlib import colormaps

            cmap = colormaps["tab20"]
            for k in np.unique(self.clusters):
                colors[self.clusters == k] = _NOISE if k <= 0 else cmap((int(k) - 1) % 20)
            return colors
        if mode == "predictions":
            numbers, prob = self.session.prediction_arrays()
        elif mode == "instant predictions":
            numbers, prob = self.instant_predictions or (np.zeros(len(colors), np.int64), None)
        else:
            numbers = store.table["class_number"].to_numpy(dtype=np.int64)
            prob = None
        for number, rgba in class_color_table(store.classes, numbers).items():
            colors[numbers == number] = rgba
            colors[numbers == number, 3] = 0.9
        if prob is not None:
            alpha = np.clip(np.nan_to_num(prob, nan=0.0), 0.25, 1.0)
            colors[numbers > 0, 3] = alpha[numbers > 0]
        return colors

    def recolor(self) -> None:
        if self.coords is not None:
            self.canvas.set_colors(self._colors())

    def _on_particles_changed(self) -> None:
        """Labels or predictions changed: recolour, and re-predict when labels changed."""
        store = self.session.store
        if self._updating or store is None or self.coords is None:
            return
        from napari_cryossl.io import particle_zyx

        table = store.table
        if len(table) != len(self.coords) or not np.allclose(particle_zyx(table), self._zyx):
            self._forget("particles were added, removed or moved: compute the map again")
            return
        labels = table["class_number"].to_numpy(dtype=np.int64)
        if self._last_labels is None or not np.array_equal(labels, self._last_labels):
            self._last_labels = labels.copy()
            if self.instant.isChecked():
                self.predict_instantly(labels)
        self.recolor()

    # instant classifier -----------------------------------------------------------
    def predict_instantly(self, labels: np.ndarray | None = None) -> bool:
        """Re-predict every particle from the labelled ones' embeddings (< 1 s for 10,000
        particles); False when fewer than two classes are labelled."""
        from napari_cryossl.analysis.population import InstantClassifier

        if self.embeddings is None:
            return False
        store = self.session.store
        if labels is None:
            labels = store.table["class_number"].to_numpy(dtype=np.int64)
        if len(np.unique(labels[labels > 0])) < 2:
            return False
        t0 = time.perf_counter()
        try:
            model = InstantClassifier().fit(self.embeddings, labels)
            predicted, prob = model.predict(self.embeddings)
        except Exception as exc:  # a Qt slot: no traceback for the user
            self.status.error(notify_error(exc))
            return False
        # Kept here, apart from the classifier's predictions in the annotations, which
        # these guesses must never replace (nor be saved as).
        self.instant_predictions = (
            np.asarray(predicted, np.int64),
            np.asarray(prob, np.float64),
        )
        self.instant_seconds = time.perf_counter() - t0
        self.status.info(
            f"instant predictions from {int((labels > 0).sum())} labels "
            f"({1000 * self.instant_seconds:.0f} ms; colour by 'instant predictions'); "
            "fine-tune for the real classifier"
        )
        return True

    # selection, labels, clusters --------------------------------------------------
    def select(self, indices) -> None:
        """Select particles (store indices): ringed on the map, selected in the points layer."""
        self.selection = np.unique(np.asarray(indices, dtype=np.int64))
        self.canvas.set_rings(self.selection)
        layer = self.session.particles_layer
        show_markers(self.session)  # selected particles are marked in the viewer
        if layer is not None and layer in self.session.viewer.layers:
            self._updating = True
            try:
                layer.selected_data = set(int(i) for i in self.selection)
            finally:
                self._updating = False
        self.status.info(f"{len(self.selection)} particles selected on the map")

    def _watch_points_layer(self) -> None:
        layer = self.session.particles_layer
        if layer is None or layer is self._watched_layer:
            return
        self._watched_layer = layer
        events = getattr(getattr(layer, "selected_data", None), "events", None)
        if events is not None and hasattr(events, "items_changed"):
            events.items_changed.connect(self._on_layer_selection)

    def _on_layer_selection(self, _event=None) -> None:
        layer = self._watched_layer
        if self._updating or layer is None or self.coords is None:
            return
        self.selection = np.asarray(sorted(int(i) for i in layer.selected_data), np.int64)
        self.canvas.set_rings(self.selection)

    def go_to(self, index: int) -> None:
        """Centre the viewer on particle ``index`` and select it (a click on the map)."""
        self.session.center_on(int(index))
        self.selection = np.array([int(index)], np.int64)
        self.canvas.set_rings(self.selection)
        self.canvas.set_marker(int(index))

    def _label(self, indices, number: int, what: str) -> int:
        store = self.session.store
        idx = np.asarray(indices, dtype=np.int64)
        before = store.table["class_number"].to_numpy(dtype=np.int64)[idx].copy()
        self.session.label_particles(idx, number)
        self.undo_stack.append((idx, before))
        self._update_ready()
        self.status.info(f"{len(idx)} particles ({what}) labelled as {self.session.class_name(number)}")
        return len(idx)

    def label_selection(self, number: int | None = None) -> int:
        """Give the selection the current class (or ``number``); undoable. Returns how many."""
        try:
            if not len(self.selection):
                raise ValueError("select particles on the map first (lasso or rectangle)")
            number = self.session.current_class if number is None else int(number)
            if number not in self.session.class_numbers():
                raise ValueError(f"class {number} is not defined: add it in step 3 first")
            return self._label(self.selection, number, "the selection")
        except Exception as exc:
            self.status.error(notify_error(str(exc) if isinstance(exc, ValueError) else exc))
            return 0

    def undo(self) -> None:
        """Restore the labels the last map action changed."""
        if not self.undo_stack:
            return
        idx, before = self.undo_stack.pop()
        try:
            for number in np.unique(before):
                self.session.label_particles(idx[before == number], int(number))
        except Exception as exc:
            self.status.error(notify_error(exc))
        self._update_ready()
        self.status.info(f"labels of {len(idx)} particles restored")

    def class_from_cluster(self, cluster_id: int | None = None) -> int | None:
        """A new class with every particle of a cluster; returns its number."""
        if self.clusters is None:
            return None
        k = self.cluster_choice.value() if cluster_id is None else int(cluster_id)
        idx = np.flatnonzero(self.clusters == k)
        if not len(idx):
            self.status.error(notify_error(f"cluster {k} is empty"))
            return None
        try:
            number = self.session.store.add_class(f"cluster {k}")
            self.session.set_current_class(number)
            self._label(idx, number, f"cluster {k}")
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        return number

    # suggestions ------------------------------------------------------------------
    def suggest(self, n: int | None = None):
        """Find the particles most worth labelling next, in the helper process (its
        k-means takes about a second for 10,000 particles, too long for the GUI thread);
        the viewer then goes to the first. Returns the worker (None if not started)."""
        from napari_cryossl.analysis.population import suggest

        if self.embeddings is None or self.suggest_worker is not None:
            return None
        labels = self.session.store.table["class_number"].to_numpy(dtype=np.int64)
        n = self.n_suggest.value() if n is None else int(n)
        embeddings, helper = self.embeddings, self.helper
        strategy = self.suggest_strategy.currentText()

        def job():
            chosen = yield from helper.call(suggest, embeddings, labels, n, strategy=strategy)
            return embeddings, [int(i) for i in chosen]

        worker = generator_worker(job)
        worker.returned.connect(self._on_suggestions)
        worker.errored.connect(lambda exc: self.status.error(notify_error(exc)))
        worker.finished.connect(self._on_suggest_finished)
        self.suggest_worker = worker
        self.suggestion_label.setText("finding the particles worth labelling next…")
        self._update_ready()
        self.session.start_worker(worker)
        return worker

    def _on_suggestions(self, result) -> None:
        if result is None:
            return
        embeddings, chosen = result
        if embeddings is not self.embeddings:  # the map changed meanwhile
            return
        labels = self.session.store.table["class_number"].to_numpy(dtype=np.int64)
        # a particle labelled while the helper worked is no suggestion any more
        self.suggestions = [i for i in chosen if i < len(labels) and labels[i] <= 0]
        self.suggestion_pos = -1
        if not self.suggestions:
            self.suggestion_label.setText("every particle is labelled")
        else:
            self.next_suggestion()

    def _on_suggest_finished(self) -> None:
        self.suggest_worker = None
        self._update_ready()

    def next_suggestion(self) -> int | None:
        if not self.suggestions:
            return None
        self.suggestion_pos = (self.suggestion_pos + 1) % len(self.suggestions)
        index = self.suggestions[self.suggestion_pos]
        self.go_to(index)
        self.suggestion_label.setText(
            f"suggestion {self.suggestion_pos + 1}/{len(self.suggestions)}: particle {index}"
            " (label it with a class key or a click)"
        )
        return index

    # gallery ----------------------------------------------------------------------
    def _visible_width(self) -> int:
        """The width the dock shows of this section (its scroll area's viewport)."""
        area = enclosing_scroll_area(self)
        return area.viewport().width() if area is not None else self.width()

    def show_gallery(self, indices=None) -> int:
        """Central slices of particles (default: the selection, else the chosen
        cluster), at most ``GALLERY_MAX``; a click on a tile goes to that particle."""
        from napari_cryossl.io import particle_zyx
        from napari_cryossl.particles.extract import extract_subtomograms

        if indices is None:
            indices = self.selection
            if not len(indices) and self.clusters is not None:
                indices = np.flatnonzero(self.clusters == self.cluster_choice.value())
        idx = np.asarray(indices, dtype=np.int64)[:GALLERY_MAX]
        while self.gallery_grid.count():
            item = self.gallery_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        if not len(idx):
            return 0
        session = self.session
        box = int(session.point_size * 1.5) // 2 * 2 + 2
        zyx = particle_zyx(session.store.table)[idx]
        boxes, _inside = extract_subtomograms(session.tomogram.data, zyx, box)
        columns = max(1, (self._visible_width() - 24) // (GALLERY_TILE_PX + 10))
        for k, (i, vol) in enumerate(zip(idx, boxes, strict=True)):
            tile = QToolButton()
            tile.setIcon(QIcon(QPixmap.fromImage(_slice_image(vol[box // 2]))))
            tile.setIconSize(QSize(GALLERY_TILE_PX, GALLERY_TILE_PX))
            tile.setToolTip(f"particle {int(i)}")
            tile.setAutoRaise(True)
            tile.clicked.connect(lambda _c=False, i=int(i): self.go_to(i))
            self.gallery_grid.addWidget(tile, k // columns, k % columns)
        return len(idx)


def _slice_image(plane: np.ndarray) -> QImage:
    """A grey QImage of one slice, contrast from its 1st-99th percentiles."""
    a = np.asarray(plane, dtype=np.float64)
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    grey = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    grey = np.ascontiguousarray((255 * grey).astype(np.uint8))
    h, w = grey.shape
    image = QImage(grey.data, w, h, w, QImage.Format.Format_Grayscale8)
    return image.copy().scaled(GALLERY_TILE_PX, GALLERY_TILE_PX,
                               Qt.AspectRatioMode.KeepAspectRatio,
                               Qt.TransformationMode.SmoothTransformation)
