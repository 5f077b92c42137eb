"""The per-viewer state of the classification workflow, shared by the dock's sections.

One `Session` per napari viewer (looked up with `get_session(viewer)`, kept in a
`WeakKeyDictionary`, so closing the viewer frees it and two viewers never share
state). It holds the open tomogram, its `AnnotationStore` (the single source of truth
for particles and labels, autosaved on every change), the napari layers that show
them, the current class, the model checkpoints made so far and the running workers.

Layers are views of the store: user edits on the particles layer (add, delete, move,
click-to-label) become store calls, and every store change redraws the layers.
Nothing here imports torch.

`Session` binds the store and composes the parts it holds, each in its own module:

- `_layer_sync.LayerSync`: draws the particles and predictions layers from the store and
  turns edits on the particles layer into store calls;
- `_click_labelling.ClickLabelling`: click-to-label and the class keys 0-9;
- `_worker_runner.WorkerRunner`: the running thread workers (``busy``).

The widgets talk to `Session` only; its methods hand the work to these parts.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_cryossl._widgets._click_labelling import CLASS_KEYS, ClickLabelling
from napari_cryossl._widgets._layer_sync import _ROLE, LayerSync
from napari_cryossl._widgets._style import DEFAULT_POINT_SIZE
from napari_cryossl._widgets._worker_runner import WorkerRunner

if TYPE_CHECKING:
    import napari

__all__ = ["CLASS_KEYS", "Session", "get_session"]

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer: napari.Viewer) -> Session:
    """The workflow session of `viewer`, created on first use."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = Session(viewer)
        _SESSIONS[viewer] = session
    return session


class Session(QObject):
    """Workflow state of one viewer: tomogram, annotations, layers, models, workers.

    Signals:
        tomogram_changed: a tomogram was opened (or closed).
        particles_changed: particles were added/removed/moved, labels or predictions changed.
        classes_changed: the class list changed (added, renamed, recoloured, deleted).
        current_class_changed(int): the class that clicks assign (0 = unlabel).
        models_changed: a new encoder or classifier checkpoint is available.
        busy_changed(bool): a background job started or every job finished.
        labelling_changed(bool): click-to-label was switched on or off.
        project_changed: tomograms were added to the project.

    The project (`project`) is the ordered list of tomograms the session works on; opening
    a tomogram adds it. Each keeps its own autosaved `AnnotationStore`; only the open one's
    is `store`, the others are read (and predictions written) with `project_store`.
    """

    tomogram_changed = Signal()
    particles_changed = Signal()
    classes_changed = Signal()
    current_class_changed = Signal(int)
    models_changed = Signal()
    busy_changed = Signal(bool)
    labelling_changed = Signal(bool)
    project_changed = Signal()

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self.tomogram = None  # io.Tomogram
        self.tomogram_path: Path | None = None  # the open tomogram's resolved path
        self.project: list[Path] = []  # every tomogram of the project, in order
        self.store = None  # annotations.AnnotationStore
        self.current_class = 1
        self._particle_diameter_a: float | None = None
        self._box_size: int | None = None  # box of the last pretraining run
        self._encoder_path: Path | None = None
        self._classifier_path: Path | None = None
        self.min_confidence = 0.0
        self._layer_sync = LayerSync(self)
        self._click_labelling = ClickLabelling(self)
        self._worker_runner = WorkerRunner(self.busy_changed.emit)
        viewer.layers.events.removed.connect(self._layer_sync.on_layer_removed)
        viewer.mouse_drag_callbacks.append(self._click_labelling.on_viewer_click)

    # ------------------------------------------------------------------ what the parts keep
    # The layers are LayerSync's, the click mode ClickLabelling's; the models and the
    # particle diameter change only through `use_encoder`, `use_classifier` and
    # `set_particle_diameter`, which tell every section.
    @property
    def image_layer(self):
        return self._layer_sync.image_layer

    @property
    def particles_layer(self):
        return self._layer_sync.particles_layer

    @property
    def predictions_layer(self):
        return self._layer_sync.predictions_layer

    @property
    def label_on_click(self) -> bool:
        return self._click_labelling.on

    @property
    def encoder_path(self) -> Path | None:
        """The encoder the next fine-tuning starts from and the map embeds with."""
        return self._encoder_path

    @property
    def classifier_path(self) -> Path | None:
        """The classifier prediction, Grad-CAM and the map use."""
        return self._classifier_path

    @property
    def box_size(self) -> int | None:
        """The box of the encoder in use, when this session pretrained it."""
        return self._box_size

    @property
    def particle_diameter_a(self) -> float | None:
        return self._particle_diameter_a

    def use_encoder(self, path, *, box_size: int | None = None) -> None:
        """Make ``path`` the encoder in use and tell every section (``models_changed``)."""
        self._encoder_path = Path(path) if path is not None else None
        if box_size is not None:
            self._box_size = int(box_size)
        self.models_changed.emit()

    def use_classifier(self, path) -> None:
        """Make ``path`` the classifier in use and tell every section."""
        self._classifier_path = Path(path) if path is not None else None
        self.models_changed.emit()

    def set_particle_diameter(self, diameter_a: float) -> None:
        """The particles' diameter in Å (markers, picking, box sizes)."""
        self._particle_diameter_a = float(diameter_a)

    # ------------------------------------------------------------------ basics
    @property
    def viewer(self) -> napari.Viewer:
        viewer = self._viewer_ref()
        if viewer is None:
            raise RuntimeError("the napari viewer of this session was closed")
        return viewer

    @property
    def voxel_size(self) -> float:
        return float(self.tomogram.voxel_size) if self.tomogram is not None else 1.0

    @property
    def point_size(self) -> float:
        """Marker diameter in voxels: the particle diameter when known."""
        if self.particle_diameter_a:
            return max(2.0, self.particle_diameter_a / self.voxel_size)
        return DEFAULT_POINT_SIZE

    @property
    def work_dir(self) -> Path:
        """Folder for this tomogram's checkpoints and exports (beside its annotations)."""
        if self.store is None:
            raise RuntimeError("open a tomogram first")
        folder = Path(self.store.path).parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def require_tomogram(self) -> None:
        """Raise a user-facing error when no tomogram is open."""
        from napari_cryossl.io import InputError

        if self.tomogram is None or self.store is None:
            raise InputError("no tomogram is open: open one in step 1 (Data) first")

    @property
    def busy(self) -> bool:
        return self._worker_runner.busy

    # ------------------------------------------------------------------ tomogram
    def open_tomogram(self, path, *, layer=None, keep_models: bool = False) -> None:
        """Open a tomogram (reusing `layer` or an already open layer of it) and its annotations.

        Annotations saved for this tomogram earlier are restored into the particles layer.
        The tomogram joins the project. With `keep_models` (switching within the project),
        the encoder and classifier in use stay when the tomogram's folder has none of its own.

        Raises:
            InputError: the file is missing, not an MRC volume, or not 3D.
        """
        from napari_cryossl._reader import tomogram_layer_data
        from napari_cryossl.io import open_tomogram
        from napari_cryossl.particles.annotations import AnnotationStore

        path = Path(path).resolve()
        # Everything that can fail comes first, so a bad file changes nothing.
        tomo = open_tomogram(path)
        store = AnnotationStore.for_tomogram(path)
        if layer is None:
            layer = self._layer_sync.find_image_layer(path)
        if layer is None:
            data, kwargs, _ = tomogram_layer_data(path)
            layer = self.viewer.add_image(data, **kwargs)
        self._detach_store()
        if self.image_layer is not None and self.image_layer is not layer:
            with contextlib.suppress(Exception):  # only the open tomogram is shown
                self.image_layer.visible = False
        layer.visible = True
        self.tomogram = tomo
        self.tomogram_path = path
        self._layer_sync.image_layer = layer
        self.store = store
        if not keep_models:
            self._encoder_path = self._classifier_path = None
        for name, attr in (("encoder.pt", "_encoder_path"), ("classifier.pt", "_classifier_path")):
            candidate = self.work_dir / name
            if candidate.is_file():
                setattr(self, attr, candidate)
        diameter = (layer.metadata or {}).get("particle_diameter_a")
        if diameter:
            self._particle_diameter_a = float(diameter)
        if self.store.classes and self.current_class not in self.class_numbers() + [0]:
            self.current_class = self.class_numbers()[0]
        store.on_change.append(self._on_store_change)
        self._layer_sync.remove_layer("particles_layer")
        self._layer_sync.remove_layer("predictions_layer")
        self.ensure_particles_layer()
        if self._has_predictions():
            self.show_predictions()
        self.add_to_project([path])
        self.tomogram_changed.emit()
        self.classes_changed.emit()
        self.particles_changed.emit()
        self.models_changed.emit()

    # ------------------------------------------------------------------ project
    def add_to_project(self, paths) -> list[Path]:
        """Add tomograms (paths) to the project, each once; returns those that were new."""
        added = []
        for p in paths:
            p = Path(p).resolve()
            if p not in self.project:
                self.project.append(p)
                added.append(p)
        if added:
            self.project_changed.emit()
        return added

    def switch_to(self, path) -> None:
        """Show another tomogram of the project (added if new), keeping the models in use."""
        self.open_tomogram(path, keep_models=True)

    def is_current(self, path) -> bool:
        return self.tomogram_path is not None and Path(path).resolve() == self.tomogram_path

    def project_store(self, path):
        """The annotations of a project tomogram: the open one's `store`, else read from
        its autosaved file (an empty store when it has none yet)."""
        from napari_cryossl.particles.annotations import AnnotationStore

        if self.is_current(path):
            return self.store
        return AnnotationStore.for_tomogram(Path(path).resolve())

    def project_tomogram(self, path):
        """The open `Tomogram` for the current one, else the path (opened where it is used)."""
        return self.tomogram if self.is_current(path) else Path(path).resolve()

    def use_layer(self, layer) -> None:
        """Start the workflow on an Image layer opened from an MRC file (by any reader)."""
        from napari_cryossl.io import TOMOGRAM_SUFFIXES, InputError

        meta = layer.metadata or {}
        path = meta.get("path") if meta.get(_ROLE) == "tomogram" else None
        source = getattr(getattr(layer, "source", None), "path", None)
        if path is None and source and Path(source).suffix.lower() in TOMOGRAM_SUFFIXES:
            path, layer = source, None  # another reader's layer: open ours (with Å scale)
        if not path:
            raise InputError(
                f"layer {layer.name!r} was not opened from a tomogram file; open the tomogram "
                "with 'Open tomogram…' (or File ▸ Open)"
            )
        self.open_tomogram(path, layer=layer)

    def _detach_store(self) -> None:
        if self.store is not None:
            with contextlib.suppress(ValueError):
                self.store.on_change.remove(self._on_store_change)

    # ------------------------------------------------------------------ classes
    def class_numbers(self) -> list[int]:
        return [int(c["number"]) for c in (self.store.classes if self.store is not None else [])]

    def class_name(self, number: int) -> str:
        for c in self.store.classes if self.store is not None else []:
            if int(c["number"]) == number:
                return str(c["name"])
        return "unlabelled" if number == 0 else f"class {number}"

    def ensure_class(self, name: str) -> int:
        """The number of the class called ``name``, defined (next number, next free
        colour) when the open tomogram's store has none yet."""
        self.require_tomogram()
        for c in self.store.classes:
            if str(c["name"]) == name:
                return int(c["number"])
        return self.store.add_class(name)

    def set_current_class(self, number: int) -> None:
        """Choose the class that clicks assign; 0 removes labels. Unknown numbers are ignored."""
        number = int(number)
        if number != 0 and number not in self.class_numbers():
            return
        if number != self.current_class:
            self.current_class = number
            self.current_class_changed.emit(number)

    def class_counts(self) -> dict[int, int]:
        """Labelled particles per class number (0 = unlabelled), every class listed."""
        counts = dict.fromkeys([0, *self.class_numbers()], 0)
        if self.store is not None:
            values, n = np.unique(self.store.table["class_number"].to_numpy(), return_counts=True)
            counts.update({int(v): int(c) for v, c in zip(values, n, strict=True)})
        return counts

    # ------------------------------------------------------------------ particles
    def label_particles(self, indices, class_number: int | None = None) -> None:
        """Label particles (store indices) with `class_number` (default: the current class)."""
        self.require_tomogram()
        indices = np.atleast_1d(
            np.asarray(list(indices) if isinstance(indices, set) else indices, dtype=np.int64)
        )
        if indices.size == 0:
            return
        number = self.current_class if class_number is None else int(class_number)
        self.store.set_class(indices, number)

    def add_particles(self, zyx, *, source: str = "manual", class_number: int = 0, score=None):
        """Add particles (ZYX voxels) to the store; returns their indices."""
        self.require_tomogram()
        return self.store.add_particles(
            np.asarray(zyx, dtype=np.float64).reshape(-1, 3),
            source=source,
            class_number=class_number,
            score=score,
        )

    def import_particles(self, path) -> int:
        """Add the particles of a STAR/CSV file, keeping their classes; returns how many.

        Classes the file uses that the store lacks are created ("class N").
        """
        from napari_cryossl.io import particle_zyx, read_particles

        self.require_tomogram()
        table = read_particles(
            path, tomogram_shape=tuple(self.tomogram.shape), voxel_size=self.voxel_size
        )
        zyx = particle_zyx(table)
        keep = np.isfinite(zyx).all(axis=1)
        if not keep.any():
            from napari_cryossl.io import InputError

            raise InputError(f"{path}: no particle has coordinates in a tomogram")
        classes = table["class_number"].to_numpy(dtype=np.int64)[keep]
        self._ensure_classes(np.unique(classes[classes > 0]))
        added = 0
        for number in np.unique(classes):
            rows = classes == number
            score = table["score"].to_numpy()[keep][rows] if "score" in table else None
            self.store.add_particles(
                zyx[keep][rows], source="imported", class_number=int(number), score=score
            )
            added += int(rows.sum())
        return added

    def _ensure_classes(self, numbers) -> None:
        """Create classes up to the largest number the data use (numbers are 1-based, dense)."""
        for number in sorted(int(n) for n in numbers):
            while number not in self.class_numbers():
                self.store.add_class(f"class {max(self.class_numbers(), default=0) + 1}")

    # ------------------------------------------------------------------ layers
    def ensure_particles_layer(self):
        """The Points layer that shows (and edits) the store's particles, created if needed."""
        return self._layer_sync.ensure_particles_layer()

    def update_slice_margins(self) -> None:
        """Make the viewer's slices as thick as a particle (see `LayerSync`)."""
        self._layer_sync.update_slice_margins()

    def refresh_layers(self) -> None:
        """Redraw the particles (and predictions) layers from the store."""
        self._layer_sync.refresh()

    def _on_store_change(self, change=None, *args, **kwargs) -> None:
        self.refresh_layers()
        self.particles_changed.emit()
        if getattr(change, "kind", None) == "classes":
            # however the class list changed (dock, script, import), every section hears it
            if self.current_class not in [0, *self.class_numbers()]:
                numbers = self.class_numbers()
                self.current_class = numbers[0] if numbers else 1
            self.classes_changed.emit()

    # ------------------------------------------------------------------ click-to-label
    def particle_at(
        self, position_world, *, view_direction=None, dims_displayed=None
    ) -> int | None:
        """Index of the particle drawn at a world position (what a click there hits), or None."""
        return self._click_labelling.particle_at(
            position_world, view_direction=view_direction, dims_displayed=dims_displayed
        )

    def start_labelling(self) -> None:
        """Clicks on particles now assign the current class; the particles layer is activated."""
        self._click_labelling.start()

    def stop_labelling(self) -> None:
        self._click_labelling.stop()

    # ------------------------------------------------------------------ predictions
    def _has_predictions(self) -> bool:
        return self._layer_sync.has_predictions()

    def show_predictions(self):
        """The Points layer of predictions (colour = predicted class, size/opacity = confidence)."""
        return self._layer_sync.show_predictions()

    def prediction_arrays(self):
        """(predicted_class, probability) per particle; 0 / NaN where there is no prediction."""
        return self._layer_sync.prediction_arrays()

    def set_min_confidence(self, value: float) -> None:
        """Hide predictions below this confidence (0 shows every particle)."""
        self.min_confidence = float(value)
        if self.predictions_layer is not None and self.predictions_layer in self.viewer.layers:
            self._layer_sync.draw_predictions()

    def center_on(self, index: int) -> None:
        """Centre the view on particle `index` and move the Z slider to its slice."""
        self._layer_sync.center_on(index)

    # ------------------------------------------------------------------ workers
    def start_worker(self, worker) -> None:
        """Start a napari thread worker at the next event-loop turn; keep it until it ends.

        The deferred start lets the caller connect the worker's signals first (a worker
        that fails at once would otherwise emit ``finished`` before anyone listens).
        """
        self._worker_runner.start(worker)

    def quit_workers(self) -> None:
        self._worker_runner.quit_all()
