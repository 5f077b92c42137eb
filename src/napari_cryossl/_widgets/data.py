"""Step 1, Data: open a tomogram (MRC or OME-Zarr, or adopt one already open) and show its
geometry; list the tomograms of the project (several files, a folder, a RELION 5
tomograms.star) and switch between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
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

        layout.addWidget(QLabel("Project tomograms (click one to show it):"))
        project_buttons = QGridLayout()
        self.add_files_button = QPushButton("Add tomograms…")
        self.add_files_button.setToolTip("Add several tomogram files to the project")
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip(
            "Add every tomogram file (.mrc/.rec/.map/.zarr) of a folder"
        )
        self.add_star_button = QPushButton("Add tomograms.star…")
        self.add_star_button.setToolTip(
            "Add the reconstructed tomograms a RELION 5 tomograms.star names"
        )
        self.add_copick_button = QPushButton("Add copick project…")
        self.add_copick_button.setToolTip(
            "Add the tomograms of a copick project (config .json) with their picks as "
            "particles, classes named after its pickable objects (needs the [copick] extra)"
        )
        # two by two: four labels in one row overflow a dock of napari's default width
        for i, button in enumerate((self.add_files_button, self.add_folder_button,
                                    self.add_star_button, self.add_copick_button)):
            project_buttons.addWidget(button, i // 2, i % 2)
        layout.addLayout(project_buttons)
        self.project_list = QListWidget()
        self.project_list.setToolTip(
            "The tomograms of this session, with their particles and labels; each keeps its "
            "own autosaved annotations"
        )
        self.project_list.setMaximumHeight(140)
        layout.addWidget(self.project_list)
        self._counts: dict[Path, str] = {}
        self._run_names: dict[Path, str] = {}  # copick run name of a tomogram path

        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.open_button.clicked.connect(self._choose_file)
        self.open_zarr_button.clicked.connect(self._choose_zarr_folder)
        self.use_button.clicked.connect(self._use_selected_layer)
        self.add_files_button.clicked.connect(self._choose_files)
        self.add_folder_button.clicked.connect(self._choose_folder)
        self.add_star_button.clicked.connect(self._choose_star)
        self.add_copick_button.clicked.connect(self._choose_copick)
        self.project_list.itemClicked.connect(self._on_item_clicked)
        session.tomogram_changed.connect(self._show_tomogram)
        session.particles_changed.connect(self._show_tomogram)
        session.project_changed.connect(self._refresh_project)
        session.tomogram_changed.connect(self._refresh_project)
        session.particles_changed.connect(self._update_current_item)
        layers = session.viewer.layers
        layers.events.inserted.connect(self._refresh_layers)
        layers.events.removed.connect(self._refresh_layers)
        layers.events.reordered.connect(self._refresh_layers)
        self._refresh_layers()
        self._show_tomogram()
        self._refresh_project()

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

    def add_paths(self, paths) -> int:
        """Add tomograms to the project; opens the first when none is open. Returns how
        many were new."""
        from napari_cryossl.io import TOMOGRAM_SUFFIXES, InputError

        try:
            paths = [Path(p) for p in paths]
            missing = [p for p in paths if not p.exists()]
            if missing:
                raise InputError(f"{missing[0]}: no such tomogram")
            other = [p for p in paths if p.suffix.lower() not in TOMOGRAM_SUFFIXES]
            if other:
                raise InputError(
                    f"{other[0]}: not a tomogram file ({', '.join(TOMOGRAM_SUFFIXES)})"
                )
            added = self.session.add_to_project(paths)
            if self.session.tomogram is None and self.session.project:
                self.session.switch_to(self.session.project[0])
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.status.info(
            f"{len(added)} tomogram(s) added; {len(self.session.project)} in the project"
        )
        return len(added)

    def add_folder(self, folder) -> int:
        """Add every tomogram file (and OME-Zarr folder) of `folder`, sorted by name."""
        from napari_cryossl.io import InputError

        paths = tomograms_in_folder(folder)
        if not paths:
            self.status.error(notify_error(InputError(f"{folder}: no tomogram files in it")))
            return 0
        return self.add_paths(paths)

    def add_tomograms_star(self, path) -> int:
        """Add the reconstructed tomograms a RELION 5 ``tomograms.star`` names."""
        from napari_cryossl.io import InputError, read_tomograms_star

        try:
            records = read_tomograms_star(path)
            paths = [r.path for r in records.values() if r.path is not None]
            if not paths:
                raise InputError(
                    f"{path}: names no reconstructed tomogram (rlnTomoReconstructedTomogram)"
                )
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        return self.add_paths(paths)

    def add_copick_project(self, config, **options) -> int:
        """Add the tomograms of a copick project, each with its picks as particles.

        ``options`` go to `io.copick.read_copick` (voxel_spacing, tomo_type, object_name,
        user_id, session_id; by default the project's only voxel spacing and tomogram
        type, and every user's picks). A tomogram's picks are added to its own annotations
        only when it has none yet, so adding the project again never duplicates them.
        Classes are named after the pickable objects, numbered by their labels.
        Returns how many tomograms were new.
        """
        from napari_cryossl.io import InputError, particle_zyx
        from napari_cryossl.io.copick import read_copick

        try:
            runs = read_copick(config, **options)
            names = _copick_object_names(config)
            for run_name, path, table in runs:
                store = self.session.project_store(path)
                if len(store.table):
                    continue
                numbers = sorted(int(c) for c in set(table["class_number"]) if int(c) > 0)
                for number in numbers:
                    while number not in store.class_numbers():
                        store.add_class(names.get(number, f"class {number}"))
                if len(table):
                    store.add_particles(
                        particle_zyx(table),
                        source="imported",
                        class_number=table["class_number"].to_numpy(dtype=np.int64),
                        score=table["score"].to_numpy() if "score" in table else None,
                        tomo_name=run_name,
                    )
            if not runs:
                raise InputError(f"{config}: no run with a tomogram")
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self._run_names.update({Path(path).resolve(): name for name, path, _t in runs})
        added = self.add_paths([path for _name, path, _t in runs])
        if self.session.store is not None:
            self.session.refresh_layers()
            self.session.classes_changed.emit()
            self.session.particles_changed.emit()
        self._refresh_project()
        return added

    def switch_to(self, path) -> bool:
        """Show another tomogram of the project; its own annotations come with it."""
        if self.session.is_current(path):
            return True
        try:
            self.session.switch_to(path)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return False
        self.status.info(f"showing {Path(path).name}")
        return True

    def _on_item_clicked(self, item) -> None:
        self.switch_to(item.data(Qt.ItemDataRole.UserRole))

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add tomograms", "", TOMOGRAM_FILTER)
        if paths:
            self.add_paths(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add every tomogram of a folder")
        if folder:
            self.add_folder(folder)

    def _choose_star(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "RELION 5 tomograms.star", "", "STAR files (*.star);;All files (*)"
        )
        if path:
            self.add_tomograms_star(path)

    def _choose_copick(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "copick project config", "", "copick config (*.json);;All files (*)"
        )
        if path:
            self.add_copick_project(path)

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
    def _count_text(self, path: Path) -> str:
        try:
            table = self.session.project_store(path).table
        except Exception:  # an unreadable store: say so in the list, not as an error
            return "annotations unreadable"
        labelled = int((table["class_number"].to_numpy() > 0).sum())
        return f"{len(table)} particles, {labelled} labelled"

    def _item_text(self, path: Path) -> str:
        mark = "▶ " if self.session.is_current(path) else "   "
        run = self._run_names.get(Path(path).resolve())  # copick: every tomogram is wbp.zarr
        name = f"{run} ({path.name})" if run else path.name
        return f"{mark}{name}: {self._counts.get(path, '')}"

    def _refresh_project(self) -> None:
        """Rebuild the list (reads every tomogram's annotations once)."""
        self._counts = {p: self._count_text(p) for p in self.session.project}
        self.project_list.clear()
        for path in self.session.project:
            item = QListWidgetItem(self._item_text(path))
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            item.setToolTip(str(path))
            self.project_list.addItem(item)
            if self.session.is_current(path):
                self.project_list.setCurrentItem(item)

    def _update_current_item(self) -> None:
        """The open tomogram's counts changed: update its row only."""
        for row, path in enumerate(self.session.project):
            if self.session.is_current(path) and row < self.project_list.count():
                self._counts[path] = self._count_text(path)
                self.project_list.item(row).setText(self._item_text(path))

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


def _copick_object_names(config) -> dict[int, str]:
    """{label: name} of a copick project's particle objects."""
    from napari_cryossl.io.copick import _open_root, _particle_objects

    return {label: name for name, label in _particle_objects(_open_root(config)).items()}


def tomograms_in_folder(folder) -> list[Path]:
    """The tomogram files (and OME-Zarr folders) directly in `folder`, sorted by name."""
    from napari_cryossl.io import TOMOGRAM_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in TOMOGRAM_SUFFIXES and not p.name.startswith(".")
    )


def _is_tomogram(layer) -> bool:
    """An Image layer read from a tomogram file (by this plugin or another reader)."""
    from napari_cryossl.io import TOMOGRAM_SUFFIXES

    if (layer.metadata or {}).get("napari_cryossl") == "tomogram":
        return True
    source = getattr(getattr(layer, "source", None), "path", None)
    return bool(source) and Path(source).suffix.lower() in TOMOGRAM_SUFFIXES and layer.ndim == 3
