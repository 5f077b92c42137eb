"""Step 7, Prediction: classify every particle, show class and confidence, jump to particles.

The predictions layer colours each particle by its predicted class; confidence sets the
marker's opacity and size, and a slider hides calls below a minimum confidence. The table
lists the least confident particles first (the ones worth checking): a click centres the
view on the particle and moves to its slice. A wrong call is fixed by labelling the
particle (click it with the right class chosen) and fine-tuning again; labelled particles
have a white rim in the predictions layer.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import RunPanel, StatusLine, notify_error, set_path_label
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._workers import generator_worker
from napari_cryossl._widgets.training import (
    CHECKPOINT_FILTER,
    ProjectCheckBox,
    project_tables,
)
from napari_cryossl.analysis.predict import PredictSettings
from napari_cryossl.base.options import DEVICE_CHOICES, describe

#: Rows shown in the jump-to table (the least confident first).
MAX_TABLE_ROWS = 500
NO_CLASSES = (
    "no classes yet: add the classes in step 3 (Labelling) first; predictions are "
    "class numbers 1, 2, ... of those classes"
)


def _ensure_classes(store, classes) -> None:
    """Give another tomogram's store the open tomogram's classes it lacks (same numbers)."""
    by_number = {int(c["number"]): c for c in classes}
    while (number := max(store.class_numbers(), default=0) + 1) <= max(by_number, default=0):
        c = by_number.get(number)
        names = {x["name"] for x in store.classes}
        store.add_class(
            c["name"] if c and c["name"] not in names else None,
            color=c["color"] if c else None,
        )


class PredictionWidget(QWidget):
    """Run the classifier on all particles; colour, filter, count and browse the predictions."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.worker = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        self.classifier_label = QLabel("")
        self.choose_button = QPushButton("Choose…")
        row.addWidget(self.classifier_label, 1)
        row.addWidget(self.choose_button)
        form.addRow("Classifier:", row)
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.device.setCurrentText(describe(PredictSettings, "device").default)
        self.device.setToolTip(describe(PredictSettings, "device").tooltip())
        form.addRow("Device:", self.device)
        self.all_tomograms = ProjectCheckBox(
            session,
            "All tomograms of the project",
            "Predict the particles of every tomogram in the project (step 1); each "
            "tomogram's predictions are saved with its own annotations",
        )
        form.addRow(self.all_tomograms)
        layout.addLayout(form)
        self.panel = RunPanel("Predict all particles", resumable=False, plot=False)
        layout.addWidget(self.panel)

        slider_row = QHBoxLayout()
        slider_row.addWidget(QLabel("Min. confidence:"))
        self.min_conf = QSlider(Qt.Orientation.Horizontal)
        self.min_conf.setRange(0, 100)
        self.min_conf.setValue(0)
        self.min_conf.setToolTip("Hide predictions less confident than this")
        self.min_conf_label = QLabel("0%")
        slider_row.addWidget(self.min_conf, 1)
        slider_row.addWidget(self.min_conf_label)
        layout.addLayout(slider_row)

        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        layout.addWidget(self.counts_label)
        self.fix_button = QPushButton("Fix by clicking")
        self.fix_button.setCheckable(True)
        self.fix_button.setToolTip(
            "Click a wrongly predicted particle to give it the current class (choose it in "
            "step 3 or with keys 1-9), then fine-tune again"
        )
        layout.addWidget(self.fix_button)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["#", "predicted", "confidence", "label"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        # Interactive + one resizeColumnsToContents() per refresh: ResizeToContents would
        # re-measure every row on every setItem (quadratic; 0.35 s for 60 rows, seconds for 500).
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(160)
        layout.addWidget(self.table, 1)
        self.status = StatusLine()
        layout.addWidget(self.status)

        self.choose_button.clicked.connect(self._choose_classifier)
        self.panel.start_requested.connect(self.start)
        self.panel.cancel_requested.connect(self.cancel)
        self.min_conf.valueChanged.connect(self._min_conf_changed)
        self.fix_button.toggled.connect(self._toggle_fix)
        self.table.cellClicked.connect(self._jump_to_row)
        session.models_changed.connect(self._show_classifier)
        session.particles_changed.connect(self.refresh)
        session.classes_changed.connect(self.refresh)
        session.tomogram_changed.connect(self.refresh)
        session.classes_changed.connect(self._update_ready)
        session.tomogram_changed.connect(self._update_ready)
        session.labelling_changed.connect(self._show_labelling)
        self._show_classifier()
        self.refresh()
        self._update_ready()

    # run ----------------------------------------------------------------------
    def start(self):
        """Predict every particle in a worker; returns it (None when refused)."""
        from napari_cryossl.io import InputError

        if self.worker is not None:
            return None
        try:
            self.session.require_tomogram()
            if not self.session.class_numbers():
                raise InputError(NO_CLASSES)
            classifier = self.session.classifier_path
            if classifier is None or not Path(classifier).is_file():
                raise InputError(
                    "no classifier yet: fine-tune one in step 6 (or choose a checkpoint)"
                )
            every = self.all_tomograms.all_tomograms()
            paths = list(self.session.project) if every else [self.session.tomogram_path]
            pairs = project_tables(self.session, every=every)
            counts = [len(table) for table, _ in pairs]
            if sum(counts) == 0:
                raise InputError("no particles to classify: pick some in step 2")
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        device = self.device.currentText()
        n_rows = dict(zip(paths, counts, strict=True))

        def job():
            from napari_cryossl.ops.predict import predict

            output = yield from predict(
                classifier, pairs, settings=PredictSettings(device=device)
            )
            return output.predictions if output is not None else None

        worker = generator_worker(job)
        worker.yielded.connect(self.panel.update_status)
        worker.returned.connect(lambda result: self._on_result(result, n_rows))
        worker.errored.connect(lambda exc: self.status.error(notify_error(exc)))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.panel.reset("extracting subtomograms…")
        self.panel.set_running(True)
        self.status.info("predicting in the background…")
        self.session.start_worker(worker)
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_result(self, result, n_rows: dict) -> None:
        """Each tomogram's share of the predictions goes into its own store (rows in order)."""
        if result is None:
            return
        predicted = np.asarray(result.class_numbers, dtype=np.int64)
        confidence = np.asarray(result.confidence, dtype=np.float64)
        ends = np.cumsum(list(n_rows.values()))
        classes = self.session.store.classes
        try:
            stores = {path: self.session.project_store(path) for path in n_rows}
            changed = [p.name for p, n in n_rows.items() if len(stores[p].table) != n]
            if changed:
                raise ValueError(
                    f"particles were added or removed while predicting ({', '.join(changed)}): "
                    "predict again"
                )
            for (path, n), end in zip(n_rows.items(), ends, strict=True):
                if n == 0:
                    continue
                store = stores[path]
                if store is not self.session.store:
                    _ensure_classes(store, classes)
                # refused (InputError) when the classifier knows classes the store lacks
                store.set_predictions(predicted[end - n : end], confidence[end - n : end])
        except Exception as exc:  # a Qt slot: an escaping error would be a traceback
            self.status.error(notify_error(exc))
            return
        if self.session._has_predictions():
            self.session.show_predictions()
        total = int(ends[-1])
        where = f" in {len(n_rows)} tomograms" if len(n_rows) > 1 else ""
        self.status.info(f"{total} particles classified{where}")
        if len(n_rows) > 1:
            self.session.project_changed.emit()  # the project list shows the new state

    def _on_finished(self) -> None:
        self.worker = None
        self.panel.set_running(False)
        self.panel.progress.setFormat("done" if self.session._has_predictions() else "idle")
        self._update_ready()

    def _update_ready(self) -> None:
        """Predict is offered only when it can work: say why not in the button's tooltip."""
        button = self.panel.start_button
        if self.worker is not None:
            return
        reason = None
        if self.session.store is None:
            reason = "open a tomogram in step 1 first"
        elif not self.session.class_numbers():
            reason = NO_CLASSES
        button.setEnabled(reason is None)
        button.setToolTip(reason or "classify every particle with the classifier above")

    # display ----------------------------------------------------------------------
    def _show_classifier(self) -> None:
        set_path_label(self.classifier_label, self.session.classifier_path)

    def _choose_classifier(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Classifier checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.session.use_classifier(Path(path))

    def _min_conf_changed(self, value: int) -> None:
        self.min_conf_label.setText(f"{value}%")
        self.session.set_min_confidence(value / 100.0)
        self.refresh()

    def _toggle_fix(self, on: bool) -> None:
        if on:
            try:
                self.session.start_labelling()
            except Exception as exc:
                self.status.error(notify_error(exc))
                self.fix_button.setChecked(False)
                return
            self.status.info(
                f"click a particle to make it {self.session.class_name(self.session.current_class)!r} "
                "(keys 1-9 change the class)"
            )
        else:
            self.session.stop_labelling()

    def _show_labelling(self, on: bool) -> None:
        self.fix_button.blockSignals(True)
        self.fix_button.setChecked(on)
        self.fix_button.blockSignals(False)

    def refresh(self) -> None:
        """Per-class counts and the table of predictions (least confident first)."""
        session = self.session
        self._show_labelling(session.label_on_click)
        if session.store is None or not session._has_predictions():
            self.counts_label.setText("no predictions yet")
            self.table.setRowCount(0)
            return
        predicted, prob = session.prediction_arrays()
        conf = np.nan_to_num(prob, nan=0.0)
        visible = (predicted > 0) & (conf >= session.min_confidence)
        numbers, counts = np.unique(predicted[visible], return_counts=True)
        count = dict(zip(numbers.tolist(), counts.tolist(), strict=True))
        colours = {int(c["number"]): c["color"] for c in session.store.classes}
        # The legend: every class with its colour (as drawn in the predictions layer).
        parts = [
            f'<span style="color:{colours.get(n, "#888888")}">&#9679;</span> '
            f"{html.escape(session.class_name(n))}: {count.get(n, 0)}"
            for n in session.class_numbers()
        ]
        self.counts_label.setText(
            f"Predicted ({int(visible.sum())} of {len(predicted)} shown; white rim = your "
            "label):<br>" + "<br>".join(parts)
        )
        labels = session.store.table["class_number"].to_numpy()
        order = np.flatnonzero(visible)
        order = order[np.argsort(conf[order], kind="stable")][:MAX_TABLE_ROWS]
        self.table.setUpdatesEnabled(False)
        try:
            self.table.setRowCount(len(order))
            for row, i in enumerate(order):
                cells = (
                    str(int(i)),
                    session.class_name(int(predicted[i])),
                    f"{100 * conf[i]:.0f}%",
                    session.class_name(int(labels[i])) if labels[i] > 0 else "",
                )
                for col, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    item.setData(Qt.ItemDataRole.UserRole, int(i))
                    self.table.setItem(row, col, item)
            self.table.resizeColumnsToContents()
        finally:
            self.table.setUpdatesEnabled(True)

    def _jump_to_row(self, row: int, _col: int = 0) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.jump_to(int(item.data(Qt.ItemDataRole.UserRole)))

    def jump_to(self, index: int) -> None:
        """Centre the viewer on particle `index` and show its slice."""
        try:
            self.session.center_on(index)
        except Exception as exc:
            self.status.error(notify_error(exc))
