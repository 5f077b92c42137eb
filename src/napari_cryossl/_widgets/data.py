"""Step 1, Data: open a tomogram (MRC or OME-Zarr, or adopt one already open) and show its
geometry."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import StatusLine, notify_error
from napari_cryossl._widgets._session import Session

TOMOGRAM_FILTER = "Tomograms (*.mrc *.rec *.map *.MRC *.REC *.MAP);;All files (*)"


class DataWidget(QWidget):
    """Open a tomogram; shows its shape, voxel size and where its annotations are saved."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        buttons = QHBoxLayout()
        self.open_button = QPushButton("Open tomogram…")
        self.open_button.setToolTip("An MRC tomogram (.mrc/.rec/.map); it stays memory-mapped")
        self.open_zarr_button = QPushButton("Open OME-Zarr…")
        self.open_zarr_button.setToolTip(
            "An OME-Zarr tomogram (a .zarr folder, e.g. from the CZ cryoET Data Portal): shown "
            "as a multiscale image, read chunk by chunk"
        )
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.open_zarr_button)
        layout.addLayout(buttons)

        row = QHBoxLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "A tomogram layer already open in napari (File ▸ Open, or the sample)"
        )
        self.use_button = QPushButton("Use layer")
        row.addWidget(self.layer_combo, 1)
        row.addWidget(self.use_button)
        layout.addLayout(row)

        form = QFormLayout()
        self.file_label = QLabel("–")
        self.shape_label = QLabel("–")
        self.voxel_label = QLabel("–")
        self.store_label = QLabel("–")
        for label in (self.file_label, self.shape_label, self.store_label):
            label.setWordWrap(True)
        form.addRow("File:", self.file_label)
        form.addRow("Shape:", self.shape_label)
        form.addRow("Voxel size:", self.voxel_label)
        form.addRow("Annotations:", self.store_label)
        layout.addLayout(form)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.open_button.clicked.connect(self._choose_file)
        self.open_zarr_button.clicked.connect(self._choose_zarr_folder)
        self.use_button.clicked.connect(self._use_selected_layer)
        session.tomogram_changed.connect(self._show_tomogram)
        session.particles_changed.connect(self._show_tomogram)
        layers = session.viewer.layers
        layers.events.inserted.connect(self._refresh_layers)
        layers.events.removed.connect(self._refresh_layers)
        layers.events.reordered.connect(self._refresh_layers)
        self._refresh_layers()
        self._show_tomogram()

    # actions -------------------------------------------------------------
    def open_path(self, path) -> bool:
        """Open `path` as the workflow's tomogram; errors go to a notification. True on success."""
        try:
            self.session.open_tomogram(path)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return False
        self.status.info(f"opened {Path(path).name}")
        return True

    def use_layer(self, layer) -> bool:
        try:
            self.session.use_layer(layer)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return False
        self.status.info(f"using layer {layer.name!r}")
        return True

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open tomogram", "", TOMOGRAM_FILTER)
        if path:
            self.open_path(path)

    def _choose_zarr_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open an OME-Zarr tomogram (.zarr folder)")
        if path:
            self.open_path(path)

    def _use_selected_layer(self) -> None:
        name = self.layer_combo.currentText()
        if name and name in self.session.viewer.layers:
            self.use_layer(self.session.viewer.layers[name])

    # display -------------------------------------------------------------
    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.session.viewer.layers if _is_tomogram(layer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        self.use_button.setEnabled(bool(names))

    def _show_tomogram(self) -> None:
        tomo = self.session.tomogram
        if tomo is None:
            return
        z, y, x = (int(s) for s in tomo.shape)
        vs = self.session.voxel_size
        self.file_label.setText(str(tomo.path))
        self.shape_label.setText(
            f"{z} × {y} × {x} voxels (Z, Y, X) = "
            f"{z * vs / 10:.0f} × {y * vs / 10:.0f} × {x * vs / 10:.0f} nm"
        )
        self.voxel_label.setText(f"{vs:.4g} Å")
        n = len(self.session.store.table)
        self.store_label.setText(f"{n} particles, autosaved to {self.session.store.path}")


def _is_tomogram(layer) -> bool:
    """An Image layer read from a tomogram file (by this plugin or another reader)."""
    from napari_cryossl.io import TOMOGRAM_SUFFIXES

    if (layer.metadata or {}).get("napari_cryossl") == "tomogram":
        return True
    source = getattr(getattr(layer, "source", None), "path", None)
    return bool(source) and Path(source).suffix.lower() in TOMOGRAM_SUFFIXES and layer.ndim == 3
