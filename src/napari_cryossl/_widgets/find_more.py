"""Find more like these (in 2 · Picking): a learned picker trained on the current labels.

One press trains a picker (`ops.picker.train_picker`) on the labelled particles of the
open tomogram (or of every project tomogram with labels) in a thread worker, then picks
with it once (`ops.pick.pick(model=...)`) at a low threshold (`CANDIDATE_THRESHOLD`), so
that every candidate comes back with its score. The picker's heatmap is shown as an image
layer, the candidates as a Points layer coloured by their class; the score slider hides
the weaker ones at once (the layer's ``shown`` mask, nothing recomputed). Accept selected
labels the selected candidates with their predicted class, Reject selected labels them
"not a particle" (`JUNK_CLASS_NAME`); both go into the annotation store, which saves
atomically. The next press continues from the last picker (``init``): a second round
learns from the corrected labels.

Each round writes a file of its own in the tomogram's work folder (``picker.pt``, then
``picker-2.pt``...); the core writes it only when training ends, so Cancel leaves no file
and the previous picker stays the one the next round starts from. torch is imported only
inside the worker, never when this module is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
)

from napari_cryossl._widgets._common import RunPanel, StatusLine, notify_error, notify_info
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets.training import ProjectCheckBox, project_tables
from napari_cryossl.ops.picker import FindMoreResult, find_more

#: The first round's picker in the work folder; later rounds go to picker-2.pt, picker-3.pt...
PICKER_NAME = "picker.pt"
#: Names of the two layers a round shows.
HEATMAP_LAYER = "picker heatmap"
PICKS_LAYER = "picker picks"
#: Candidates are rings in their class colour (labelled particles are filled discs,
#: unlabelled ones grey rings), so the density and the heatmap under them stay visible.
_FACE_ALPHA = 0.0
_BORDER_WIDTH = 0.2


def latest_picker(folder) -> Path | None:
    """The last round's picker in ``folder``: the highest-numbered of ``picker.pt``,
    ``picker-2.pt``, ``picker-3.pt``... (None when there is none)."""
    folder = Path(folder)
    stem, suffix = Path(PICKER_NAME).stem, Path(PICKER_NAME).suffix
    pattern = re.compile(rf"^{re.escape(stem)}(?:-(\d+))?{re.escape(suffix)}$")
    found = []
    for path in folder.glob(f"{stem}*{suffix}"):
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1) or 1), path))
    return max(found)[1] if found else None


class FindMoreWidget(QGroupBox):
    """The "Find more like these" box of the Picking section: train, show, filter, accept
    or reject, and the next round."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__("Find more like these (learned picker)", parent)
        self.session = session
        self.worker = None
        self.cancelled = False
        self.run_out: Path | None = None  # the picker file of the running (or last) round
        self.heatmap_layer = None
        self.picks_layer = None
        self._warm_worker = None
        self._warm = False
        self._stage = ""
        self._round_tomogram: Path | None = None
        form = QFormLayout(self)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(_default_steps())
        self.steps.setToolTip(
            "Training steps of each round (a batch of patches around the labelled "
            "particles and of background each); the default is the picker's own"
        )
        self.continue_box = QCheckBox("Continue from the last picker")
        self.continue_box.setChecked(True)
        self.continue_box.setToolTip(
            "Start from the last round's picker (its weights, diameter and classes), so "
            "the next round learns from the labels added since; untick to start afresh"
        )
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps)
        steps_row.addWidget(self.continue_box, 1)
        form.addRow("Steps:", steps_row)
        self.all_tomograms = ProjectCheckBox(
            session,
            "Learn from every project tomogram",
            "Train on the labelled particles of every tomogram in the project that has "
            "some, not only the one shown (the picks are made in the one shown)",
        )
        form.addRow(self.all_tomograms)
        self.panel = RunPanel("Find more like these", resumable=False, plot=False)
        self.panel.start_button.setToolTip(
            "Train a picker on the labelled particles (every class; 'not a particle' as "
            "negatives), then show its heatmap and the particles it finds"
        )
        self.panel.cancel_button.setToolTip(
            "Stop the round: no picker file is written and the last picker stays in use"
        )
        form.addRow(self.panel)
        self.score = QSlider(Qt.Orientation.Horizontal)
        self.score.setRange(0, 100)
        self.score.setValue(int(round(100 * _default_threshold())))
        self.score.setToolTip(
            "Show only the picks whose score (the heatmap's peak, 0-1) is at least this"
        )
        self.score_label = QLabel("")
        score_row = QHBoxLayout()
        score_row.addWidget(self.score, 1)
        score_row.addWidget(self.score_label)
        form.addRow("Min score:", score_row)
        buttons = QHBoxLayout()
        self.select_shown_button = QPushButton("Select shown")
        self.select_shown_button.setToolTip("Select every pick the score slider shows")
        self.accept_button = QPushButton("Accept selected")
        self.accept_button.setToolTip(
            "Add the selected picks as particles labelled with their predicted class"
        )
        self.reject_button = QPushButton("Reject selected")
        self.reject_button.setToolTip(
            "Add the selected picks as 'not a particle': the next round learns to avoid them"
        )
        for b in (self.select_shown_button, self.accept_button, self.reject_button):
            buttons.addWidget(b)
        form.addRow(buttons)
        self.picker_label = QLabel("")
        self.picker_label.setWordWrap(True)
        form.addRow(self.picker_label)
        self.status = StatusLine()
        form.addRow(self.status)

        self.panel.start_requested.connect(self.start)
        self.panel.cancel_requested.connect(self.cancel)
        self.score.valueChanged.connect(self._apply_score)
        self.select_shown_button.clicked.connect(self.select_shown)
        self.accept_button.clicked.connect(self.accept_selected)
        self.reject_button.clicked.connect(self.reject_selected)
        session.tomogram_changed.connect(self._on_tomogram)
        self._on_tomogram()

    # ------------------------------------------------------------------ warm-up
    def showEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        super().showEvent(event)
        self.warm_up()

    def warm_up(self):
        """Import the picker's stack (torch, MONAI: seconds, holding the GIL in bursts of
        up to a few hundred ms) in a worker the first time the box is shown, so those
        pauses come when the section opens, not when the user presses the button.

        Returns:
            The worker while the stack loads, None once it is loaded.
        """
        from napari_cryossl._widgets._workers import function_worker

        if self._warm or self._warm_worker is not None:
            return self._warm_worker
        worker = function_worker(_import_picker_stack)
        worker.returned.connect(lambda _r: setattr(self, "_warm", True))
        worker.finished.connect(lambda: setattr(self, "_warm_worker", None))
        self._warm_worker = worker
        self.session.start_worker(worker)
        return worker

    # ------------------------------------------------------------------ state
    @property
    def min_score(self) -> float:
        return self.score.value() / 100.0

    def last_picker(self) -> Path | None:
        """The picker the next round continues from (the work folder's last round)."""
        if self.session.store is None:
            return None
        return latest_picker(self.session.work_dir)

    def _show_picker(self) -> None:
        last = self.last_picker()
        if last is None:
            self.picker_label.setText("picker: none yet (the first round trains one)")
            self.picker_label.setToolTip("")
        else:
            self.picker_label.setText(f"picker: {last.name} (the next round continues from it)")
            self.picker_label.setToolTip(str(last))
        self._update_buttons()

    def _update_buttons(self) -> None:
        has = self._has_picks()
        for b in (self.select_shown_button, self.accept_button, self.reject_button):
            b.setEnabled(has)

    def _has_picks(self) -> bool:
        layer = self.picks_layer
        return layer is not None and layer in self.session.viewer.layers and len(layer.data) > 0

    # ------------------------------------------------------------------ the round
    def examples(self) -> tuple[list, dict]:
        """``(table, tomogram)`` pairs to learn from and {class number: name}.

        Raises:
            InputError: no labelled particle of a particle class.
        """
        from napari_cryossl.io import InputError
        from napari_cryossl.particles.annotations import JUNK_CLASS_NAME

        session = self.session
        session.require_tomogram()
        pairs = project_tables(session, every=self.all_tomograms.all_tomograms())
        known = session.class_numbers()
        pairs = [
            (t, tomo) for t, tomo in pairs if np.isin(t["class_number"].to_numpy(), known).any()
        ]
        labels = np.concatenate([t["class_number"].to_numpy() for t, _ in pairs] or [[]])
        used = [int(k) for k in np.unique(labels) if int(k) in known]
        classes = {k: session.class_name(k) for k in used}
        if not [k for k, name in classes.items() if name != JUNK_CLASS_NAME]:
            raise InputError(
                "find more like these needs a few labelled particles (step 3): label some "
                "of a class, then try again"
            )
        return pairs, classes

    def start(self):
        """Train a picker and pick with it in a thread worker; returns the worker, or None
        when refused (a message says why)."""
        from napari_cryossl._widgets._workers import generator_worker
        from napari_cryossl.train import unused_checkpoint_path

        if self.worker is not None:
            return None
        try:
            pairs, classes = self.examples()
            out = unused_checkpoint_path(self.session.work_dir / PICKER_NAME)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        init = self.last_picker() if self.continue_box.isChecked() else None
        session = self.session
        tomogram = session.tomogram
        diameter_px = (
            session.particle_diameter_a / session.voxel_size
            if session.particle_diameter_a
            else None
        )
        steps = int(self.steps.value())

        def job():
            result = yield from find_more(
                pairs, tomogram, out, init=init, classes=classes, steps=steps,
                diameter_px=diameter_px,
            )
            return result

        worker = generator_worker(job)
        worker.yielded.connect(self._on_status)
        worker.returned.connect(self._show_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_out = out
        self.cancelled = False
        self._stage = ""
        self._round_tomogram = session.tomogram_path
        self.panel.reset("loading the picker's network…")
        self.panel.set_running(True)
        n = sum(int((t["class_number"].to_numpy() > 0).sum()) for t, _ in pairs)
        self.status.info(
            f"training {out.name} on {n} labelled particle(s) of {len(classes)} class(es)"
            + (f", from {init.name}" if init is not None else "")
            + " in the background: napari stays usable"
        )
        session.start_worker(worker)
        return worker

    def cancel(self) -> None:
        """Stop the round at its next step: no picker file, the last picker unchanged."""
        if self.worker is not None:
            self.cancelled = True
            self.status.info("cancelling after the current step…")
            self.worker.quit()

    def _on_status(self, status) -> None:
        if status.stage != self._stage:  # train, then pick: each its own bar and estimate
            self._stage = status.stage
            self.panel.reset(status.stage)
        self.panel.update_status(status)

    def _on_error(self, exc) -> None:
        self.panel.progress.setFormat("failed")
        self.status.error(notify_error(exc))

    def _on_finished(self) -> None:
        self.worker = None
        self.panel.set_running(False)
        if self.cancelled:
            out = self.run_out
            if out is not None and out.is_file():
                message = f"picking stopped; {out.name} was saved and the next round continues from it"
            else:
                last = self.last_picker()
                message = "cancelled: no picker written" + (
                    f"; {last.name} is unchanged and the next round continues from it"
                    if last is not None
                    else ""
                )
            self.panel.progress.setFormat("cancelled")
            self.status.info(message)
            notify_info(message)
        self._show_picker()

    # ------------------------------------------------------------------ showing a round
    def _show_result(self, result: FindMoreResult) -> None:
        session = self.session
        if self._round_tomogram is None or not session.is_current(self._round_tomogram):
            self.status.info(
                f"{result.picker.name} saved; another tomogram is open now, so its picks are "
                "not shown (press Find more like these there)"
            )
            return
        self.panel.progress.setFormat(f"done: {result.picker.name}")
        self._show_heatmap(result.heatmap)
        table = result.table
        zyx = table[["z", "y", "x"]].to_numpy(dtype=np.float64)
        fresh = self._not_labelled(zyx, radius=0.5 * float(table.attrs.get("diameter_px", 0)))
        self._show_picks(
            zyx[fresh],
            table["class_number"].to_numpy(dtype=np.int64)[fresh],
            table["score"].to_numpy(dtype=np.float64)[fresh],
        )
        known = int((~fresh).sum())
        self.status.info(
            f"{result.picker.name}: {int(fresh.sum())} candidate(s)"
            + (f" ({known} more are particles you labelled)" if known else "")
            + "; move the slider, select picks (click or drag), then accept or reject them"
        )

    def _show_heatmap(self, heatmap: np.ndarray) -> None:
        session = self.session
        viewer = session.viewer
        layer = self.heatmap_layer
        if layer is not None and layer in viewer.layers and layer.data.shape == heatmap.shape:
            layer.data = heatmap
            layer.contrast_limits = (0.0, 1.0)
            layer.visible = True
        else:
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
            vs = session.voxel_size
            translate = tuple(session.image_layer.translate) if session.image_layer else (0, 0, 0)
            self.heatmap_layer = viewer.add_image(
                heatmap,
                name=HEATMAP_LAYER,
                scale=(vs, vs, vs),
                translate=translate,
                colormap="inferno",
                blending="additive",
                contrast_limits=(0.0, 1.0),
                opacity=0.7,
                metadata={"napari_cryossl": "picker heatmap"},
            )

    def _show_picks(self, zyx: np.ndarray, classes: np.ndarray, score: np.ndarray) -> None:
        session = self.session
        viewer = session.viewer
        vs = session.voxel_size
        features = {"class_number": classes, "score": score}
        layer = self.picks_layer
        if layer is None or layer not in viewer.layers:
            from napari_cryossl._widgets._layer_sync import marker_size

            translate = tuple(session.image_layer.translate) if session.image_layer else (0, 0, 0)
            layer = viewer.add_points(
                zyx,
                ndim=3,
                name=PICKS_LAYER,
                scale=(vs, vs, vs),
                translate=translate,
                size=marker_size(session),
                border_width=_BORDER_WIDTH,
                border_width_is_relative=True,
                projection_mode="rescale_spherical",
                features=features,
                metadata={"napari_cryossl": "picker picks"},
            )
            self.picks_layer = layer
        else:
            layer.selected_data = set()
            layer.data = zyx
            layer.features = features
        self._color_picks()
        self._apply_score()
        viewer.layers.selection.active = layer
        layer.mode = "select"
        self._update_buttons()

    def _color_picks(self) -> None:
        from napari_cryossl._widgets._style import class_color_table

        layer = self.picks_layer
        if layer is None or not len(layer.data):
            return
        classes = layer.features["class_number"].to_numpy(dtype=np.int64)
        colors = class_color_table(self.session.store.classes, classes)
        border = np.array([colors[int(k)] for k in classes], dtype=float)
        face = border.copy()
        face[:, 3] = _FACE_ALPHA
        layer.border_color = border
        layer.face_color = face
        layer.refresh()

    def _apply_score(self, *_) -> None:
        """Hide the picks under the slider's score (nothing is recomputed)."""
        layer = self.picks_layer
        threshold = self.min_score
        if layer is None or layer not in self.session.viewer.layers:
            self.score_label.setText(f"≥ {threshold:.2f}")
            return
        score = layer.features["score"].to_numpy(dtype=np.float64) if len(layer.data) else np.zeros(0)
        shown = score >= threshold
        if len(shown):
            layer.shown = shown
            layer.selected_data = {i for i in layer.selected_data if shown[i]}
        self.score_label.setText(f"≥ {threshold:.2f} · {int(shown.sum())} of {len(shown)}")

    def shown_count(self) -> int:
        """How many picks the slider shows."""
        layer = self.picks_layer
        if layer is None or not len(layer.data):
            return 0
        return int(np.count_nonzero(layer.shown))

    def select_shown(self) -> int:
        """Select every pick the slider shows; returns how many."""
        layer = self.picks_layer
        if layer is None or not len(layer.data):
            return 0
        layer.selected_data = set(np.flatnonzero(layer.shown).tolist())
        return len(layer.selected_data)

    # ------------------------------------------------------------------ accept / reject
    def accept_selected(self) -> int:
        """Add the selected (shown) picks as particles of their predicted class; returns how many."""
        return self._label_selected(junk=False)

    def reject_selected(self) -> int:
        """Add the selected (shown) picks as "not a particle" (the class is created if
        missing); returns how many."""
        return self._label_selected(junk=True)

    def _label_selected(self, *, junk: bool) -> int:
        from napari_cryossl.io import particle_zyx
        from napari_cryossl.particles.annotations import JUNK_CLASS_NAME

        session = self.session
        layer = self.picks_layer
        if layer is None or layer not in session.viewer.layers or not len(layer.data):
            self.status.info("no picks: press Find more like these first")
            return 0
        shown = np.asarray(layer.shown, dtype=bool)
        chosen = np.array(sorted(i for i in layer.selected_data if shown[i]), dtype=np.int64)
        if not len(chosen):
            self.status.info("select picks first (click or drag on the picks, or Select shown)")
            return 0
        zyx = np.asarray(layer.data, dtype=np.float64)[chosen]
        score = layer.features["score"].to_numpy(dtype=np.float64)[chosen]
        try:
            if junk:
                classes = np.full(len(chosen), session.ensure_class(JUNK_CLASS_NAME))
            else:
                classes = layer.features["class_number"].to_numpy(dtype=np.int64)[chosen]
            defined = np.isin(classes, session.class_numbers())
            # a pick on an unlabelled particle labels that particle instead of adding one
            table = session.store.table
            existing = particle_zyx(table)
            near = _nearest_within(existing, zyx, radius=0.5 * _marker_voxels(session))
            on_particle = np.zeros(len(zyx), dtype=bool)
            if len(existing):
                unlabelled = table["class_number"].to_numpy() == 0
                on_particle = (near >= 0) & unlabelled[np.maximum(near, 0)]
            on_labelled = (near >= 0) & ~on_particle
            done = defined & ~on_labelled
            for number in np.unique(classes[done]):
                rows = done & (classes == number)
                relabel = rows & on_particle
                if relabel.any():
                    session.label_particles(near[relabel], int(number))
                new = rows & ~on_particle
                if new.any():
                    session.add_particles(
                        zyx[new], source="auto", class_number=int(number), score=score[new]
                    )
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self._drop_picks(chosen[done])
        n = int(done.sum())
        what = JUNK_CLASS_NAME if junk else "particles of their predicted class"
        skipped = []
        if (~defined).any():
            skipped.append(f"{int((~defined).sum())} of a class deleted since")
        if (on_labelled & defined).any():
            skipped.append(f"{int((on_labelled & defined).sum())} on particles already labelled")
        self.status.info(
            f"added {n} pick(s) as {what}"
            + (f" ({'; '.join(skipped)} skipped)" if skipped else "")
            + "; the next round learns from them"
        )
        return n

    def _drop_picks(self, indices: np.ndarray) -> None:
        """Take labelled picks out of the candidates (they are particles now)."""
        layer = self.picks_layer
        if layer is None or not len(indices):
            return
        keep = np.ones(len(layer.data), dtype=bool)
        keep[indices] = False
        features = layer.features.iloc[np.flatnonzero(keep)].reset_index(drop=True)
        layer.selected_data = set()
        layer.data = np.asarray(layer.data)[keep]
        layer.features = features
        self._color_picks()
        self._apply_score()
        self._update_buttons()

    def _not_labelled(self, zyx: np.ndarray, radius: float) -> np.ndarray:
        """True for picks with no labelled particle within ``radius`` voxels (the
        examples themselves are not news)."""
        from napari_cryossl.io import particle_zyx

        table = self.session.store.table
        labelled = particle_zyx(table[table["class_number"].to_numpy() > 0])
        near = _nearest_within(labelled, zyx, radius=max(radius, 0.5 * _marker_voxels(self.session)))
        return near < 0

    # ------------------------------------------------------------------ housekeeping
    def _on_tomogram(self) -> None:
        """Another tomogram: the last one's heatmap and picks go."""
        viewer = self.session.viewer
        current = self.session.tomogram_path
        if self._round_tomogram is not None and current != self._round_tomogram:
            for layer in (self.heatmap_layer, self.picks_layer):
                if layer is not None and layer in viewer.layers:
                    viewer.layers.remove(layer)
            self.heatmap_layer = self.picks_layer = None
        self._show_picker()
        self._apply_score()


def _import_picker_stack() -> None:
    """What the first round would import (torch, MONAI's U-Net); runs in a worker."""
    import monai.networks.nets  # noqa: F401  (the learned picker's U-Net)
    import torch  # noqa: F401

    import napari_cryossl.ops.pick  # noqa: F401
    import napari_cryossl.ops.picker  # noqa: F401
    import napari_cryossl.particles.learned_picker  # noqa: F401


def _default_steps() -> int:
    """The core's default number of training steps (``PickerConfig.steps``)."""
    from napari_cryossl.particles.learned_picker import PickerConfig  # no torch at import

    return int(PickerConfig().steps)


def _default_threshold() -> float:
    from napari_cryossl.particles.learned_picker import DEFAULT_THRESHOLD

    return float(DEFAULT_THRESHOLD)


def _marker_voxels(session) -> float:
    from napari_cryossl._widgets._layer_sync import marker_size

    return float(marker_size(session))


def _nearest_within(points: np.ndarray, queries: np.ndarray, radius: float) -> np.ndarray:
    """Index of the nearest of ``points`` within ``radius`` of each query, -1 where none."""
    if not len(points) or not len(queries):
        return np.full(len(queries), -1, dtype=np.int64)
    from scipy.spatial import cKDTree

    dist, index = cKDTree(points).query(queries, distance_upper_bound=float(radius))
    return np.where(np.isfinite(dist), index, -1).astype(np.int64)
