"""Step 2, Picking: clicks, DoG or template-matching picks previewed before accepting, imports,
and "Find more like these" (a learned picker, `find_more.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import StatusLine, notify_error
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets.find_more import FindMoreWidget
from napari_cryossl.base.options import describe

PARTICLE_FILTER = "Particle lists (*.star *.csv);;All files (*)"
_PREVIEW_COLOR = "#ffd400"


class PickingWidget(QWidget):
    """Manual picking on the particles layer, automatic picking (DoG or template matching)
    with a preview, STAR/CSV import."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.preview_layer = None
        self._preview_table = None
        self.worker = None
        layout = QVBoxLayout(self)

        manual = QGroupBox("By hand")
        m = QVBoxLayout(manual)
        self.add_button = QPushButton("Add by clicking")
        self.add_button.setToolTip("Click in the view to add a particle (napari's 'add' mode)")
        self.select_button = QPushButton("Select")
        self.select_button.setToolTip(
            "Click or drag a box to select particles; Delete removes them"
        )
        self.delete_button = QPushButton("Delete selected")
        self.import_button = QPushButton("Import STAR / CSV…")
        self.import_button.setToolTip("Add particles (and their classes) from a STAR or CSV file")
        grid = QGridLayout()
        grid.addWidget(self.add_button, 0, 0)
        grid.addWidget(self.select_button, 0, 1)
        grid.addWidget(self.delete_button, 1, 0)
        grid.addWidget(self.import_button, 1, 1)
        m.addLayout(grid)
        layout.addWidget(manual)

        auto = QGroupBox("Automatic (Difference of Gaussians or template matching)")
        form = QFormLayout(auto)
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(5.0, 5000.0)
        self.diameter.setDecimals(0)
        self.diameter.setSuffix(" Å")
        self.diameter.setValue(session.particle_diameter_a or 150.0)
        self.diameter.setToolTip(
            "Approximate particle diameter in Å (ångström, not voxels); sets the DoG filter "
            "widths and the size of the particle markers"
        )
        self.diameter_px = QLabel("")  # the diameter in voxels, beside the field
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 100.0)
        self.threshold.setSingleStep(0.5)
        # PickSettings leaves the threshold at None, "automatic": show the value it means
        from napari_cryossl.particles.picking import AUTO_THRESHOLD, PickSettings

        self.threshold.setValue(AUTO_THRESHOLD)
        self.threshold.setToolTip(describe(PickSettings, "threshold").tooltip())
        self.max_picks = QSpinBox()
        self.max_picks.setRange(0, 1_000_000)
        self.max_picks.setSpecialValueText("no limit")
        self.max_picks.setToolTip(describe(PickSettings, "max_particles").tooltip())
        diameter_row = QHBoxLayout()
        diameter_row.addWidget(self.diameter, 1)
        diameter_row.addWidget(self.diameter_px)
        form.addRow("Particle diameter (Å):", diameter_row)
        form.addRow("Threshold:", self.threshold)
        form.addRow("Max picks:", self.max_picks)
        self._add_method_rows(form)
        buttons = QHBoxLayout()
        self.preview_button = QPushButton("Preview picks")
        self.accept_button = QPushButton("Accept")
        self.discard_button = QPushButton("Discard")
        self.accept_button.setEnabled(False)
        self.discard_button.setEnabled(False)
        for b in (self.preview_button, self.accept_button, self.discard_button):
            buttons.addWidget(b)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop picking (after the current chunk or rotations)")
        self.stop_button.setVisible(False)
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        form.addRow(self.progress)
        layout.addWidget(auto)

        self.find_more = FindMoreWidget(session)
        layout.addWidget(self.find_more)

        self.count_label = QLabel("")
        layout.addWidget(self.count_label)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.add_button.clicked.connect(lambda: self._set_mode("add"))
        self.select_button.clicked.connect(lambda: self._set_mode("select"))
        self.delete_button.clicked.connect(self.delete_selected)
        self.import_button.clicked.connect(self._choose_import)
        self.preview_button.clicked.connect(self.preview)
        self.accept_button.clicked.connect(self.accept)
        self.discard_button.clicked.connect(self.discard)
        self.diameter.valueChanged.connect(self._diameter_changed)
        session.particles_changed.connect(self._update_count)
        session.tomogram_changed.connect(self._on_tomogram)
        self._update_count()

    # manual ----------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        try:
            self.session.stop_labelling()
            layer = self.session.ensure_particles_layer()
        except Exception as exc:
            self.status.error(notify_error(exc))
            return
        layer.visible = True  # it may be hidden behind the predictions
        self.session.viewer.layers.selection.active = layer
        layer.mode = mode
        self.status.info(
            "click to add particles (new ones are unlabelled)"
            if mode == "add"
            else "click or drag to select; Delete (or the button) removes them"
        )

    def delete_selected(self) -> None:
        layer = self.session.particles_layer
        if layer is None or not layer.selected_data:
            self.status.info("select particles first (Select, then click or drag)")
            return
        n = len(layer.selected_data)
        layer.remove_selected()  # the layer event updates the store
        self.status.info(f"deleted {n} particle(s)")

    def import_file(self, path) -> int:
        """Add the particles of a STAR/CSV file; returns how many (0 on error)."""
        try:
            n = self.session.import_particles(path)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.status.info(f"imported {n} particles from {Path(path).name}")
        return n

    def _choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import particles", "", PARTICLE_FILTER)
        if path:
            self.import_file(path)

    # automatic -----------------------------------------------------------------
    def preview(self):
        """Pick in a background thread (``ops.pick``: DoG, or template matching); the
        picks appear in a preview layer. Stop ends either between chunks or rotations.

        Returns:
            The worker (tests wait on its signals), or None if nothing was started.
        """
        from napari_cryossl._widgets._workers import generator_worker
        from napari_cryossl.particles.picking import PickSettings

        try:
            self.session.require_tomogram()
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        if self.worker is not None:
            return None
        tomo = self.session.tomogram
        diameter_px = self.diameter.value() / self.session.voxel_size
        settings = PickSettings(
            threshold=self.threshold.value(),
            max_particles=self.max_picks.value() or None,
            refine=self.refine.isChecked(),
        )
        template = matching = None
        if self.method.currentData() == "template":
            from napari_cryossl.particles.template_matching import TemplateMatchSettings

            template = self.template.currentData()
            if template is None:
                self.status.error("choose a template: a built-in complex or a file")
                return None
            matching = TemplateMatchSettings(
                angular_step=self.angular_step.value() or None,
                false_alarms=self.false_alarms.value(),
            )

        def job():
            from napari_cryossl.ops.pick import pick

            output = yield from pick(
                tomo, diameter_px=diameter_px, settings=settings, template=template,
                matching=matching,
            )
            return output.table

        worker = generator_worker(job)
        worker.yielded.connect(lambda p: self._show_progress(p.step, p.n_steps))
        worker.returned.connect(self._show_preview)
        worker.errored.connect(self._picking_failed)
        worker.aborted.connect(self._picking_stopped)
        worker.finished.connect(self._picking_done)
        self.worker = worker
        self.preview_button.setEnabled(False)
        self.stop_button.setVisible(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        if template is not None:
            self.status.info(f"matching {self.template.currentText()}…")
        else:
            self.status.info(f"picking blobs of {diameter_px:.1f} voxels…")
        self.session.start_worker(worker)
        return worker

    # template matching ---------------------------------------------------------------
    def _add_method_rows(self, form) -> None:
        """Method (DoG or template matching) and the template's options."""
        from napari_cryossl.particles.picking import PickSettings
        from napari_cryossl.particles.template_matching import TemplateMatchSettings
        from napari_cryossl.simulate.structures import builtin_structures

        self.refine = QCheckBox("Centre on the particle")
        self.refine.setChecked(bool(describe(PickSettings, "refine").default))
        self.refine.setToolTip(describe(PickSettings, "refine").tooltip())
        self.method = QComboBox()
        self.method.addItem("Difference of Gaussians", "dog")
        self.method.addItem("Template matching", "template")
        self.method.setToolTip(
            "Difference of Gaussians finds blobs of the diameter; template matching finds "
            "copies of one structure, with their orientation (slower: many rotations)"
        )
        self.template = QComboBox()
        for entry in builtin_structures():
            self.template.addItem(entry.name, entry.name)
        self.template.addItem("From file…", None)
        self.template.setToolTip(
            "The structure to find: a built-in complex, or a map (.mrc) or model (.pdb/.cif)"
        )
        self.angular_step = QDoubleSpinBox()
        step = describe(TemplateMatchSettings, "angular_step")
        self.angular_step.setRange(0.0, step.info.maximum)
        self.angular_step.setSpecialValueText("auto")
        self.angular_step.setSuffix("°")
        self.angular_step.setValue(0.0)
        self.angular_step.setToolTip(step.tooltip())
        self.false_alarms = QDoubleSpinBox()
        alarms = describe(TemplateMatchSettings, "false_alarms")
        self.false_alarms.setRange(0.01, 1000.0)
        self.false_alarms.setValue(alarms.default)
        self.false_alarms.setToolTip(alarms.tooltip())
        form.addRow(self.refine)
        form.addRow("Method:", self.method)
        form.addRow("Template:", self.template)
        form.addRow("Angular step:", self.angular_step)
        form.addRow("False picks:", self.false_alarms)
        self.template.activated.connect(self._template_chosen)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()

    def _method_changed(self, *_) -> None:
        template = self.method.currentData() == "template"
        for w in (self.template, self.angular_step, self.false_alarms):
            w.setEnabled(template)
        self.refine.setEnabled(not template)
        self.threshold.setEnabled(not template)  # template matching: from the false picks

    def _template_chosen(self, index: int) -> None:
        if self.template.itemData(index) is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Template", "", "Maps and models (*.mrc *.map *.pdb *.cif *.gz);;All (*)"
            )
            if path:
                self.set_template_file(path)

    def set_template_file(self, path) -> None:
        """Use a map or model file as the template (and select it)."""
        path = str(path)
        index = self.template.findData(path)
        if index < 0:
            self.template.insertItem(self.template.count() - 1, Path(path).name, path)
            index = self.template.findData(path)
        self.template.setCurrentIndex(index)

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _picking_done(self) -> None:
        self.worker = None
        self.preview_button.setEnabled(True)
        self.progress.setVisible(False)
        self.stop_button.setVisible(False)

    def _picking_failed(self, exc) -> None:
        self.status.error(notify_error(exc))

    def _picking_stopped(self) -> None:
        self.status.info("picking stopped; nothing picked")

    def stop(self) -> None:
        """Stop a running picking after its current chunk (or batch of rotations)."""
        if self.worker is not None:
            self.worker.quit()

    def _show_preview(self, table) -> None:
        from napari_cryossl.io import particle_zyx

        self._preview_table = table
        zyx = particle_zyx(table)
        viewer = self.session.viewer
        vs = self.session.voxel_size
        size = self.diameter.value() / vs
        if self.preview_layer is None or self.preview_layer not in viewer.layers:
            self.preview_layer = viewer.add_points(
                zyx,
                ndim=3,
                name="picking preview",
                scale=(vs, vs, vs),
                translate=tuple(self.session.image_layer.translate)
                if self.session.image_layer
                else (0, 0, 0),
                size=size,
                face_color="transparent",
                border_color=_PREVIEW_COLOR,
                border_width=0.12,
                border_width_is_relative=True,
                projection_mode="rescale_spherical",
                features={"score": table["score"].to_numpy()},
                metadata={"napari_cryossl": "preview"},
            )
        else:
            self.preview_layer.data = zyx
            self.preview_layer.features = {"score": table["score"].to_numpy()}
            self.preview_layer.size = size
            self.preview_layer.border_color = _PREVIEW_COLOR
        self.preview_layer.editable = False
        self.accept_button.setEnabled(len(zyx) > 0)
        self.discard_button.setEnabled(True)
        self.accept_button.setText(f"Accept {len(zyx)}")
        self.status.info(
            f"{len(zyx)} candidate(s) in yellow; change the threshold and preview again, "
            "or Accept to add them to the particles"
        )

    def accept(self) -> int:
        """Add the previewed picks to the particles (skipping ones already there); returns how many."""
        if self._preview_table is None:
            return 0
        from napari_cryossl.io import particle_zyx

        table = self._preview_table
        zyx = particle_zyx(table)
        keep = self._not_duplicates(
            zyx, radius=0.5 * self.diameter.value() / self.session.voxel_size
        )
        try:
            if keep.any():
                self.session.add_particles(
                    zyx[keep], source="auto", score=table["score"].to_numpy()[keep]
                )
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.discard(message=False)
        n_dup = int((~keep).sum())
        self.status.info(
            f"added {int(keep.sum())} picks"
            + (f" ({n_dup} skipped: already a particle there)" if n_dup else "")
        )
        return int(keep.sum())

    def discard(self, message: bool = True) -> None:
        self._preview_table = None
        if self.preview_layer is not None and self.preview_layer in self.session.viewer.layers:
            self.session.viewer.layers.remove(self.preview_layer)
        self.preview_layer = None
        self.accept_button.setEnabled(False)
        self.accept_button.setText("Accept")
        self.discard_button.setEnabled(False)
        if message:
            self.status.info("preview discarded")

    def _not_duplicates(self, zyx: np.ndarray, radius: float) -> np.ndarray:
        """True for picks with no existing particle within `radius` voxels."""
        from scipy.spatial import cKDTree

        from napari_cryossl.io import particle_zyx

        existing = particle_zyx(self.session.store.table)
        if len(existing) == 0 or len(zyx) == 0:
            return np.ones(len(zyx), dtype=bool)
        dist, _ = cKDTree(existing).query(zyx, distance_upper_bound=radius)
        return ~np.isfinite(dist)

    # display -----------------------------------------------------------------------
    def _diameter_changed(self, value: float) -> None:
        self._show_diameter_px(warn=True)
        self.session.set_particle_diameter(float(value))
        if self.session.store is not None:
            self.session.refresh_layers()

    def _show_diameter_px(self, warn: bool = False) -> None:
        """The diameter in voxels beside the field; a warning when that is under
        `MIN_MARKER_VOXELS` (an Å value typed as voxels, or the wrong unit)."""
        from napari_cryossl._widgets._style import MIN_MARKER_VOXELS

        vs = self.session.voxel_size if self.session.tomogram is not None else None
        if vs is None:
            self.diameter_px.setText("")
            return
        px = self.diameter.value() / vs
        self.diameter_px.setText(f"= {px:.1f} voxels")
        self.diameter_px.setToolTip(f"{self.diameter.value():.0f} Å at {vs:g} Å per voxel")
        if warn and px < MIN_MARKER_VOXELS:
            from napari.utils.notifications import show_warning

            message = (
                f"a diameter of {self.diameter.value():.0f} Å is only {px:.1f} voxels of "
                f"{vs:g} Å: the field is in Å (a {MIN_MARKER_VOXELS * vs:.0f} Å particle spans "
                f"{MIN_MARKER_VOXELS:.0f} voxels); markers stay {MIN_MARKER_VOXELS:.0f} voxels "
                "wide so they remain visible"
            )
            self.status.error(message)
            show_warning(message)

    def _on_tomogram(self) -> None:
        if self.session.particle_diameter_a:
            self.diameter.blockSignals(True)
            self.diameter.setValue(self.session.particle_diameter_a)
            self.diameter.blockSignals(False)
        else:
            self.session.set_particle_diameter(self.diameter.value())
        self._show_diameter_px()
        self.discard(message=False)
        self._update_count()

    def _update_count(self) -> None:
        if self.session.store is None:
            self.count_label.setText("no tomogram open")
            return
        table = self.session.store.table
        by_source = table["source"].value_counts().to_dict() if len(table) else {}
        detail = ", ".join(f"{n} {src}" for src, n in sorted(by_source.items()))
        self.count_label.setText(f"{len(table)} particles" + (f" ({detail})" if detail else ""))
