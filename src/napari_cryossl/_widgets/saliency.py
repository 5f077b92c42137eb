"""Step 7, Saliency: 3D Grad-CAM of the classifier, shown over the tomogram.

Heatmaps (one per particle box, in [0, 1]) are pasted into the smallest block of the
tomogram that holds the chosen particles, and shown as an Image layer with the
tomogram's scale and a translate that puts that block where it belongs: the heatmap
lines up with the tomogram in world coordinates (Å), in 2D and in 3D, without
allocating a tomogram-sized array for a few particles.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import RunPanel, StatusLine, notify_error
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._workers import generator_worker
from napari_cryossl.options import DEVICE_CHOICES, describe
from napari_cryossl.saliency import GradcamSettings

HEATMAP_LAYER = "Grad-CAM"


def heatmap_block(
    shape_zyx, centers_zyx: np.ndarray, box_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The block of the tomogram covering every particle's box: (start_zyx, shape_zyx), voxels."""
    centers = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, 3)
    shape = np.asarray(shape_zyx, dtype=np.int64)
    half = box_size // 2 + 1
    lo = np.clip(np.floor(centers.min(axis=0)).astype(np.int64) - half, 0, shape)
    hi = np.clip(np.ceil(centers.max(axis=0)).astype(np.int64) + half + 1, 0, shape)
    return lo, np.maximum(hi - lo, 1)


class SaliencyWidget(QWidget):
    """Grad-CAM heatmaps for the selected particles (or all) as an inferno overlay."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.worker = None
        self.heatmap_layer = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.scope = QComboBox()
        self.scope.addItem("selected particles", "selected")
        self.scope.addItem("all particles", "all")
        self.target = QComboBox()
        form.addRow("Particles:", self.scope)
        form.addRow("Explain class:", self.target)
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.device.setCurrentText(describe(GradcamSettings, "device").default)
        self.device.setToolTip(describe(GradcamSettings, "device").tooltip())
        form.addRow("Device:", self.device)
        layout.addLayout(form)
        self.panel = RunPanel("Compute Grad-CAM", resumable=False, plot=False)
        layout.addWidget(self.panel)
        row = QHBoxLayout()
        row.addWidget(QLabel("Opacity:"))
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(60)
        row.addWidget(self.opacity, 1)
        self.view_button = QPushButton("3D view")
        self.view_button.setCheckable(True)
        row.addWidget(self.view_button)
        layout.addLayout(row)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.panel.start_requested.connect(self.start)
        self.panel.cancel_requested.connect(self.cancel)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.view_button.toggled.connect(
            lambda on: setattr(session.viewer.dims, "ndisplay", 3 if on else 2)
        )
        session.classes_changed.connect(self._fill_targets)
        session.tomogram_changed.connect(self._fill_targets)
        self._fill_targets()

    def _fill_targets(self) -> None:
        current = self.target.currentData()
        self.target.clear()
        self.target.addItem("predicted class", None)
        for number in self.session.class_numbers():
            self.target.addItem(f"{number} · {self.session.class_name(number)}", number)
        index = self.target.findData(current)
        self.target.setCurrentIndex(max(index, 0))

    def selected_indices(self) -> np.ndarray:
        selected: set[int] = set()
        for layer in (self.session.predictions_layer, self.session.particles_layer):
            if layer is not None and layer in self.session.viewer.layers:
                selected |= {int(i) for i in layer.selected_data}
        return np.array(sorted(selected), dtype=np.int64)

    def start(self, indices=None):
        """Compute Grad-CAM in a worker for `indices` (default: the scope chosen); returns it."""
        from pathlib import Path

        from napari_cryossl.io import InputError, particle_zyx

        if self.worker is not None:
            return None
        try:
            self.session.require_tomogram()
            classifier = self.session.classifier_path
            if classifier is None or not Path(classifier).is_file():
                raise InputError("no classifier yet: fine-tune one in step 6 first")
            table = self.session.store.table
            if indices is None:
                indices = (
                    np.arange(len(table))
                    if self.scope.currentData() == "all"
                    else self.selected_indices()
                )
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size == 0:
                raise InputError(
                    "no particle selected: select particles (Picking ▸ Select, or a row of the "
                    "prediction table) or choose 'all particles'"
                )
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        tomo = self.session.tomogram
        sub = table.iloc[indices].reset_index(drop=True)
        centers = particle_zyx(sub)
        target = self.target.currentData()
        device = self.device.currentText()
        # the particle's radius with a margin (None: a third of the box, see paste_heatmaps)
        radius = 0.6 * self.session.point_size if self.session.particle_diameter_a else None

        def job():
            from napari_cryossl.checkpoints import load_checkpoint
            from napari_cryossl.dataset import SubtomogramSet
            from napari_cryossl.saliency import iter_gradcam, paste_heatmaps

            state = load_checkpoint(classifier, kind="classifier")
            box = int(state["box_size"])
            data = SubtomogramSet.from_table(sub, tomo, box)
            maps = None
            for item in iter_gradcam(state, data, target_class=target, device=device,
                                     batch_size=GradcamSettings.batch_size):
                if hasattr(item, "n_steps"):
                    yield item
                else:
                    maps = item
            lo, shape = heatmap_block(tomo.shape, centers, box)
            block = paste_heatmaps(
                tuple(int(s) for s in shape), centers - lo, maps, radius=radius
            )
            return block, lo

        worker = generator_worker(job)
        worker.yielded.connect(self.panel.update_status)
        worker.returned.connect(self._show_heatmap)
        worker.errored.connect(lambda exc: self.status.error(notify_error(exc)))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.panel.reset("loading the classifier…")
        self.panel.set_running(True)
        self.status.info(f"Grad-CAM for {indices.size} particle(s)…")
        self.session.start_worker(worker)
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_finished(self) -> None:
        self.worker = None
        self.panel.set_running(False)
        self.panel.progress.setFormat("done" if self.heatmap_layer is not None else "idle")

    def _show_heatmap(self, result) -> None:
        if result is None:
            return
        block, lo = result
        viewer = self.session.viewer
        vs = self.session.voxel_size
        image = self.session.image_layer
        scale = tuple(image.scale) if image is not None else (vs, vs, vs)
        base = np.asarray(image.translate if image is not None else (0.0, 0.0, 0.0), dtype=float)
        translate = tuple(base + np.asarray(lo, dtype=float) * np.asarray(scale))
        layer = self.heatmap_layer
        if layer is None or layer not in viewer.layers:
            layer = viewer.add_image(
                block,
                name=HEATMAP_LAYER,
                scale=scale,
                translate=translate,
                colormap="inferno",
                blending="additive",
                opacity=self.opacity.value() / 100.0,
                contrast_limits=(0.0, 1.0),
                metadata={
                    "napari_cryossl": "gradcam",
                    "block_start_zyx": tuple(int(v) for v in lo),
                },
            )
            self.heatmap_layer = layer
        else:
            # Each setter redraws (30-40 ms each here): set only what changed.
            if not np.allclose(layer.scale, scale):
                layer.scale = scale
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
            layer.data = block
            if tuple(layer.contrast_limits) != (0.0, 1.0):
                layer.contrast_limits = (0.0, 1.0)
            layer.metadata["block_start_zyx"] = tuple(int(v) for v in lo)
        # The particle markers would cover the heatmap: hide them (the layer list brings
        # them back).
        for points in (self.session.predictions_layer, self.session.particles_layer):
            if points is not None and points in viewer.layers:
                points.visible = False
        viewer.layers.selection.active = layer
        self.status.info(
            "heatmap in inferno over the tomogram (bright = what the network used); the "
            "particle layers are hidden (tick them in the layer list to show them again); "
            "'3D view' shows it in 3D"
        )

    def _set_opacity(self, value: int) -> None:
        if self.heatmap_layer is not None:
            self.heatmap_layer.opacity = value / 100.0
