"""Step 8, Saliency: 3D Grad-CAM of the classifier, shown over the tomogram.

Heatmaps (one per particle box, in [0, 1]) are pasted into the smallest block of the
tomogram that holds the chosen particles, and shown as an Image layer with the
tomogram's scale and a translate that puts that block where it belongs: the heatmap
lines up with the tomogram in world coordinates (Å), in 2D and in 3D, without
allocating a tomogram-sized array for a few particles.

What a person sees is set here, from the data, not left to napari's defaults: the
heatmap's contrast limits come from its robust range (`heatmap_limits`), a colour bar
says what the colours mean, and in 3D the heatmap is drawn as an attenuated maximum
projection added over the tomogram, which is drawn as a minimum projection (protein is
dark). *One particle at a time* shows a crop centred on one explained particle: its box
of the tomogram and its whole heatmap, with the rest of the tomogram hidden, so that the
3D view shows that particle and not the whole volume in front of it.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import (
    RunPanel,
    StatusLine,
    compact_combo,
    notify_error,
)
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._workers import generator_worker
from napari_cryossl.analysis.saliency import GradcamSettings
from napari_cryossl.base.options import DEVICE_CHOICES, describe

HEATMAP_LAYER = "Grad-CAM"
CROP_LAYER = "Grad-CAM crop"
CROP_TOMOGRAM_LAYER = "tomogram crop"
#: How the heatmaps are drawn in 3D: a maximum projection that fades with depth, so the
#: hot parts stand out without the whole box glowing.
HEATMAP_RENDERING = "attenuated_mip"
#: The tomogram in 3D beside a heatmap: protein is dark, so its minimum projection.
TOMOGRAM_RENDERING_3D = "minip"
#: Heatmap values below this percentile of the non-zero voxels are transparent (the
#: upper part is what the network used); the top of the colour bar is the 99.5th.
HEATMAP_PERCENTILES = (50.0, 99.5)


def heatmap_limits(volume) -> tuple[float, float]:
    """Contrast limits of a heatmap from its data: the `HEATMAP_PERCENTILES` of its
    non-zero voxels (a heatmap is zero away from the particles); (0, 1) when all zero."""
    a = np.asarray(volume, dtype=np.float32)
    values = a[a > 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, HEATMAP_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = 0.0, max(hi, 1e-6)
    return lo, hi


def crop_bounds(center_zyx, box_size: int) -> tuple[np.ndarray, int]:
    """(start_zyx, edge) of the cube of odd edge centred on a particle's voxel (its centre
    rounded as ``extract.extract_subtomograms`` rounds it), as large as fits in its box:
    the crop's central voxel is the particle's."""
    center = np.floor(np.asarray(center_zyx, dtype=np.float64).reshape(3) + 0.5)
    edge = 2 * ((int(box_size) - 1) // 2) + 1
    return center.astype(np.int64) - edge // 2, edge


def crop_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """The `crop_bounds` part of one particle's (B, B, B) Grad-CAM box: the box starts at
    the rounded centre minus B // 2, so the crop starts at index B // 2 - edge // 2."""
    b = heatmap.shape[0]
    _, edge = crop_bounds(np.zeros(3), b)
    s = b // 2 - edge // 2
    return np.ascontiguousarray(heatmap[s : s + edge, s : s + edge, s : s + edge])


class SaliencyWidget(QWidget):
    """Grad-CAM heatmaps for the selected particles (or all) as an inferno overlay."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.worker = None
        self.heatmap_layer = None
        self.crop_layer = None  # one particle's heatmap, centred on it
        self.crop_tomogram_layer = None  # the tomogram around that particle
        self.explained = np.zeros(0, np.int64)  # particles of the last heatmap (store rows)
        self.maps: np.ndarray | None = None  # their (N, B, B, B) heatmaps
        self.centers: np.ndarray | None = None  # their centres (N, 3), voxels ZYX
        self.crop_pos = 0
        self._hidden_by_crop: list = []  # layers the crop hid, shown again when it goes
        self._tomogram_rendering: str | None = None  # the tomogram's own, restored in 2D
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.scope = compact_combo(QComboBox())
        self.scope.addItem("selected particles", "selected")
        self.scope.addItem("all particles", "all")
        self.target = compact_combo(QComboBox())
        form.addRow("Particles:", self.scope)
        form.addRow("Explain class:", self.target)
        self.device = compact_combo(QComboBox())
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
        self.opacity.setValue(80)
        row.addWidget(self.opacity, 1)
        self.view_button = QPushButton("3D view")
        self.view_button.setCheckable(True)
        row.addWidget(self.view_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.crop_check = QCheckBox("One particle at a time")
        self.crop_check.setToolTip(
            "A crop centred on one explained particle: its box of the tomogram and its "
            "heatmap (the rest of the tomogram hidden, so the 3D view shows this particle)"
        )
        self.prev_button = QPushButton("◀")
        self.next_button = QPushButton("▶")
        for button in (self.prev_button, self.next_button):
            button.setMaximumWidth(36)
        row.addWidget(self.crop_check, 1)
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        layout.addLayout(row)
        self.crop_label = QLabel("")
        self.crop_label.setWordWrap(True)
        layout.addWidget(self.crop_label)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.panel.start_requested.connect(self.start)
        self.panel.cancel_requested.connect(self.cancel)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.view_button.toggled.connect(
            lambda on: setattr(session.viewer.dims, "ndisplay", 3 if on else 2)
        )
        # napari's own 2D/3D button too: the 3D rendering follows whichever was used
        ndisplay, callback = session.viewer.dims.events.ndisplay, self._on_ndisplay
        ndisplay.connect(callback)
        self.destroyed.connect(lambda *_: ndisplay.disconnect(callback))
        self.crop_check.toggled.connect(self._on_crop_toggled)
        self.prev_button.clicked.connect(lambda: self.show_crop(self.crop_pos - 1))
        self.next_button.clicked.connect(lambda: self.show_crop(self.crop_pos + 1))
        session.classes_changed.connect(self._fill_targets)
        session.tomogram_changed.connect(self._fill_targets)
        self._fill_targets()
        self._update_crop_buttons()

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

        from napari_cryossl.io import InputError

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
        settings = GradcamSettings(target_class=self.target.currentData(),
                                   device=self.device.currentText())

        def job():
            from napari_cryossl.ops.gradcam import gradcam_block

            out = yield from gradcam_block(classifier, sub, tomo, settings=settings)
            return out.block, out.start_zyx, indices, out.centers_zyx, out.maps

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

    # what the tomogram's layer puts a block at ----------------------------------------
    def _placement(self, start_zyx) -> tuple[tuple, tuple]:
        """(scale, translate) of a block of the tomogram starting at voxel ``start_zyx``."""
        vs = self.session.voxel_size
        image = self.session.image_layer
        scale = tuple(image.scale) if image is not None else (vs, vs, vs)
        base = np.asarray(image.translate if image is not None else (0.0, 0.0, 0.0), dtype=float)
        translate = tuple(base + np.asarray(start_zyx, dtype=float) * np.asarray(scale))
        return scale, translate

    def _style_heatmap(self, layer) -> None:
        """What the plugin shows of a heatmap: limits from its data, a colour bar, the 3D
        rendering; only the colour bar of the heatmap in view is shown."""
        limits = heatmap_limits(layer.data)
        if not np.allclose(layer.contrast_limits, limits):
            layer.contrast_limits = limits
        if layer.rendering != HEATMAP_RENDERING:
            layer.rendering = HEATMAP_RENDERING
        layer.colorbar.visible = True
        for other in (self.heatmap_layer, self.crop_layer):
            if other is not None and other is not layer:
                other.colorbar.visible = False

    def _heatmap_image(self, data, name: str, start_zyx, role: str):
        scale, translate = self._placement(start_zyx)
        return self.session.viewer.add_image(
            data,
            name=name,
            scale=scale,
            translate=translate,
            colormap="inferno",
            blending="additive",
            rendering=HEATMAP_RENDERING,
            opacity=self.opacity.value() / 100.0,
            contrast_limits=heatmap_limits(data),
            metadata={"napari_cryossl": role, "block_start_zyx": tuple(int(v) for v in start_zyx)},
        )

    def _show_heatmap(self, result) -> None:
        if result is None:
            return
        block, lo, indices, centers, maps = result
        viewer = self.session.viewer
        self._close_crop()
        self.explained, self.centers, self.maps = np.asarray(indices), centers, maps
        self.crop_pos = 0
        scale, translate = self._placement(lo)
        layer = self.heatmap_layer
        if layer is None or layer not in viewer.layers:
            layer = self._heatmap_image(block, HEATMAP_LAYER, lo, "gradcam")
            self.heatmap_layer = layer
        else:
            # Each setter redraws (30-40 ms each here): set only what changed.
            if not np.allclose(layer.scale, scale):
                layer.scale = scale
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
            layer.data = block
            layer.visible = True
            layer.metadata["block_start_zyx"] = tuple(int(v) for v in lo)
        self._style_heatmap(layer)
        # The particle markers would cover the heatmap: hide them (going to a particle,
        # with Next ▶, the prediction table or the map, brings them back).
        for points in (self.session.predictions_layer, self.session.particles_layer):
            if points is not None and points in viewer.layers:
                points.visible = False
        viewer.layers.selection.active = layer
        if len(self.explained) == 1:  # one particle: the view goes to it, zoomed in
            self._focus(centers[0], layer)
        self._apply_3d_rendering()
        self._update_crop_buttons()
        lo_c, hi_c = layer.contrast_limits
        self.status.info(
            f"heatmap in inferno over the tomogram (colour bar: {lo_c:.2f} to {hi_c:.2f}, "
            "bright = what the network used); the particle markers are hidden until you "
            "go to a particle; '3D view' shows it in 3D, 'One particle at a time' a crop"
        )
        if self.crop_check.isChecked():
            self.show_crop(0)

    def _focus(self, center_zyx, layer) -> None:
        """Centre the view on a particle (its slice in 2D) with ``layer`` filling the view."""
        viewer = self.session.viewer
        world = self._world(center_zyx)
        viewer.fit_to_view(layers=[layer], margin=0.3)
        viewer.dims.set_point(range(3), tuple(world))
        viewer.camera.center = tuple(world[list(viewer.dims.displayed)])

    def _world(self, zyx) -> np.ndarray:
        scale, translate = self._placement(np.zeros(3))
        return np.asarray(translate) + np.asarray(zyx, dtype=float) * np.asarray(scale)

    # one particle at a time ----------------------------------------------------------
    def _update_crop_buttons(self) -> None:
        n = len(self.explained)
        self.crop_check.setEnabled(n > 0)
        on = self.crop_check.isChecked() and n > 0
        self.prev_button.setEnabled(on and n > 1)
        self.next_button.setEnabled(on and n > 1)
        if not on:
            self.crop_label.setText("")

    def _on_crop_toggled(self, on: bool) -> None:
        if on and len(self.explained):
            self.show_crop(self.crop_pos)
        else:
            self._close_crop()
        self._update_crop_buttons()

    def show_crop(self, position: int = 0):
        """Show the crop of the ``position``-th explained particle (wrapping): its heatmap
        box and its box of the tomogram, centred on it, the rest of the tomogram and the
        block heatmap hidden; returns the crop's heatmap layer (None without heatmaps)."""
        if self.maps is None or not len(self.explained):
            return None
        session, viewer = self.session, self.session.viewer
        k = int(position) % len(self.explained)
        self.crop_pos = k
        if not self.crop_check.isChecked():
            self.crop_check.blockSignals(True)
            self.crop_check.setChecked(True)
            self.crop_check.blockSignals(False)
        start, edge = crop_bounds(self.centers[k], self.maps.shape[1])
        shape = np.asarray(session.tomogram.shape)
        lo, hi = np.maximum(start, 0), np.minimum(start + edge, shape)  # inside the tomogram
        heat = crop_heatmap(self.maps[k])
        heat = heat[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))]
        tomo = np.asarray(
            session.tomogram.data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))],
            dtype=np.float32,
        )
        scale, translate = self._placement(lo)
        image = session.image_layer
        for layer in (image, self.heatmap_layer):
            if (layer is not None and layer in viewer.layers and layer.visible
                    and layer not in self._hidden_by_crop):
                layer.visible = False
                self._hidden_by_crop.append(layer)
        if self.crop_tomogram_layer is None or self.crop_tomogram_layer not in viewer.layers:
            from napari_cryossl._reader import robust_contrast_limits

            self.crop_tomogram_layer = viewer.add_image(
                tomo, name=CROP_TOMOGRAM_LAYER, scale=scale, translate=translate,
                colormap="gray", contrast_limits=robust_contrast_limits(tomo),
                metadata={"napari_cryossl": "gradcam crop tomogram"},
            )
        else:
            from napari_cryossl._reader import robust_contrast_limits

            self.crop_tomogram_layer.data = tomo
            self.crop_tomogram_layer.translate = translate
            self.crop_tomogram_layer.contrast_limits = robust_contrast_limits(tomo)
        if self.crop_layer is None or self.crop_layer not in viewer.layers:
            self.crop_layer = self._heatmap_image(heat, CROP_LAYER, lo, "gradcam crop")
        else:
            self.crop_layer.data = heat
            self.crop_layer.translate = translate
            self.crop_layer.metadata["block_start_zyx"] = tuple(int(v) for v in lo)
            self.crop_layer.visible = True
        self._style_heatmap(self.crop_layer)
        for points in (session.predictions_layer, session.particles_layer):
            if points is not None and points in viewer.layers:
                points.visible = False
        self._focus(self.centers[k], self.crop_layer)
        self._apply_3d_rendering()
        index = int(self.explained[k])
        self.crop_label.setText(
            f"particle {index} ({k + 1}/{len(self.explained)}): a {edge}³-voxel crop centred "
            "on it"
        )
        self._update_crop_buttons()
        return self.crop_layer

    def _close_crop(self) -> None:
        """Remove the crop's layers and show again what the crop hid."""
        viewer = self.session.viewer
        for attr in ("crop_layer", "crop_tomogram_layer"):
            layer = getattr(self, attr)
            setattr(self, attr, None)
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
        for layer in self._hidden_by_crop:
            if layer in viewer.layers:
                layer.visible = True
        self._hidden_by_crop = []
        if self.heatmap_layer is not None and self.heatmap_layer in viewer.layers:
            self.heatmap_layer.colorbar.visible = True
        if self.crop_check.isChecked():
            self.crop_check.blockSignals(True)
            self.crop_check.setChecked(False)
            self.crop_check.blockSignals(False)
        self._update_crop_buttons()

    # 3D -----------------------------------------------------------------------------
    def _on_ndisplay(self, _event=None) -> None:
        on = self.session.viewer.dims.ndisplay == 3
        if self.view_button.isChecked() != on:
            self.view_button.blockSignals(True)
            self.view_button.setChecked(on)
            self.view_button.blockSignals(False)
        self._apply_3d_rendering()

    def _apply_3d_rendering(self) -> None:
        """In 3D beside a heatmap, the tomograms (the whole one and the crop) are drawn as
        minimum projections; back in 2D the whole one gets its own rendering back."""
        viewer = self.session.viewer
        image = self.session.image_layer
        heatmaps = [layer for layer in (self.heatmap_layer, self.crop_layer)
                    if layer is not None and layer in viewer.layers]
        in_3d = viewer.dims.ndisplay == 3 and bool(heatmaps)
        crop = self.crop_tomogram_layer
        if crop is not None and crop in viewer.layers:
            crop.rendering = TOMOGRAM_RENDERING_3D
        if image is None or image not in viewer.layers or not hasattr(image, "rendering"):
            return
        if in_3d and image.rendering != TOMOGRAM_RENDERING_3D:
            self._tomogram_rendering = str(image.rendering)
            image.rendering = TOMOGRAM_RENDERING_3D
        elif not in_3d and self._tomogram_rendering is not None:
            image.rendering = self._tomogram_rendering
            self._tomogram_rendering = None

    def _set_opacity(self, value: int) -> None:
        for layer in (self.heatmap_layer, self.crop_layer):
            if layer is not None:
                layer.opacity = value / 100.0
