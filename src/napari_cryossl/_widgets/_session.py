"""The per-viewer state of the classification workflow, shared by the dock's sections.

One `Session` per napari viewer (looked up with `get_session(viewer)`, kept in a
`WeakKeyDictionary`, so closing the viewer frees it and two viewers never share
state). It holds the open tomogram, its `AnnotationStore` (the single source of truth
for particles and labels, autosaved on every change), the napari layers that show
them, the current class, the model checkpoints made so far and the running workers.

Layers are views of the store: user edits on the particles layer (add, delete, move,
click-to-label) become store calls, and every store change redraws the layers.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_cryossl._widgets._style import (
    DEFAULT_POINT_SIZE,
    class_color_table,
    point_colors,
)

if TYPE_CHECKING:
    import napari

#: Particle layers this session draws carry this key in their metadata.
_ROLE = "napari_cryossl"
#: Keys that switch the current class while a particles layer is active (0 = unlabel).
CLASS_KEYS = tuple(str(i) for i in range(10))
#: Points whose label came from a person get this rim in the predictions layer.
_LABELLED_RIM = np.array([1.0, 1.0, 1.0, 1.0])

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
    """

    tomogram_changed = Signal()
    particles_changed = Signal()
    classes_changed = Signal()
    current_class_changed = Signal(int)
    models_changed = Signal()
    busy_changed = Signal(bool)
    labelling_changed = Signal(bool)

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self.tomogram = None  # io.Tomogram
        self.image_layer = None
        self.store = None  # annotations.AnnotationStore
        self.particles_layer = None
        self.predictions_layer = None
        self.current_class = 1
        self.label_on_click = False
        self.particle_diameter_a: float | None = None
        self.box_size: int | None = None  # box of the last pretraining run
        self.encoder_path: Path | None = None
        self.classifier_path: Path | None = None
        self.min_confidence = 0.0
        self._workers: set = set()
        self._syncing = 0
        self._n_known = 0  # particles the layer had when last drawn from the store
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.mouse_drag_callbacks.append(self._on_viewer_click)

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
        return bool(self._workers)

    # ------------------------------------------------------------------ tomogram
    def open_tomogram(self, path, *, layer=None) -> None:
        """Open a tomogram (reusing `layer` or an already open layer of it) and its annotations.

        Annotations saved for this tomogram earlier are restored into the particles layer.

        Raises:
            InputError: the file is missing, not an MRC volume, or not 3D.
        """
        from napari_cryossl._reader import tomogram_layer_data
        from napari_cryossl.annotations import AnnotationStore
        from napari_cryossl.io import open_tomogram

        path = Path(path).resolve()
        # Everything that can fail comes first, so a bad file changes nothing.
        tomo = open_tomogram(path)
        store = AnnotationStore.for_tomogram(path)
        if layer is None:
            layer = self._find_image_layer(path)
        if layer is None:
            data, kwargs, _ = tomogram_layer_data(path)
            layer = self.viewer.add_image(data, **kwargs)
        self._detach_store()
        self.tomogram = tomo
        self.image_layer = layer
        self.store = store
        self.encoder_path = self.classifier_path = None
        for name, attr in (("encoder.pt", "encoder_path"), ("classifier.pt", "classifier_path")):
            candidate = self.work_dir / name
            if candidate.is_file():
                setattr(self, attr, candidate)
        diameter = (layer.metadata or {}).get("particle_diameter_a")
        if diameter:
            self.particle_diameter_a = float(diameter)
        if self.store.classes and self.current_class not in self.class_numbers() + [0]:
            self.current_class = self.class_numbers()[0]
        store.on_change.append(self._on_store_change)
        self._remove_layer("particles_layer")
        self._remove_layer("predictions_layer")
        self.ensure_particles_layer()
        if self._has_predictions():
            self.show_predictions()
        self.tomogram_changed.emit()
        self.classes_changed.emit()
        self.particles_changed.emit()
        self.models_changed.emit()

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
                f"layer {layer.name!r} was not opened from an MRC file; open the tomogram "
                "with 'Open tomogram…' (or File ▸ Open)"
            )
        self.open_tomogram(path, layer=layer)

    def _find_image_layer(self, path: Path):
        for layer in self.viewer.layers:
            meta = layer.metadata or {}
            if meta.get(_ROLE) == "tomogram" and Path(meta.get("path", "")) == path:
                return layer
        return None

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

    def particle_at(
        self, position_world, *, view_direction=None, dims_displayed=None
    ) -> int | None:
        """Index of the particle drawn at a world position (what a click there hits), or None."""
        for layer in (self.predictions_layer, self.particles_layer):
            if layer is None or not layer.visible or len(layer.data) == 0:
                continue
            value = layer.get_value(
                position_world,
                view_direction=view_direction,
                dims_displayed=dims_displayed,
                world=True,
            )
            if value is not None:
                return int(value)
        return None

    def _on_viewer_click(self, viewer, event) -> None:
        """Mouse press anywhere in the canvas: label the particle under the cursor."""
        if not self.label_on_click or self.store is None:
            return
        if getattr(event, "button", 1) not in (1, None):
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", None) == "add":
            return  # the click adds a particle; do not also label
        index = self.particle_at(
            event.position,
            view_direction=getattr(event, "view_direction", None),
            dims_displayed=list(getattr(event, "dims_displayed", []) or []) or None,
        )
        if index is not None:
            self.label_particles([index])

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
        self.require_tomogram()
        layer = self.particles_layer
        if layer is None or layer not in self.viewer.layers:
            from napari_cryossl._reader import points_kwargs

            kwargs = points_kwargs(
                self.store.table,
                voxel_size=self.voxel_size,
                point_size=self.point_size,
                classes=self.store.classes,
            )
            data = kwargs.pop("data")
            kwargs["translate"] = (
                tuple(self.image_layer.translate) if self.image_layer else (0, 0, 0)
            )
            with self._syncing_layers():
                layer = self.viewer.add_points(
                    data,
                    name=f"particles · {Path(self.tomogram.path).stem}",
                    metadata={
                        _ROLE: "particles",
                        "path": str(self.store.path),
                        "voxel_size": self.voxel_size,
                        "tomo_name": Path(self.tomogram.path).name,
                        "tomogram_shape": tuple(int(s) for s in self.tomogram.shape),
                    },
                    **kwargs,
                )
            self._n_known = len(data)
            self.update_slice_margins()
            layer.events.data.connect(self._on_layer_data)
            self._bind_class_keys(layer)
            self.particles_layer = layer
        return layer

    def update_slice_margins(self) -> None:
        """Make the viewer's slices as thick as a particle, so each particle shows (as the
        disc where its sphere cuts the plane) on every slice it spans, not only on its centre.

        Image layers ignore the margins (their projection mode is "none"); Points layers
        with projection_mode "rescale_spherical" use them.
        """
        dims = self.viewer.dims
        radius = 0.5 * self.point_size * self.voxel_size  # world units (Å)
        if dims.ndim >= 3:
            dims.margin_left = (radius,) * dims.ndim
            dims.margin_right = (radius,) * dims.ndim

    def refresh_layers(self) -> None:
        """Redraw the particles (and predictions) layers from the store."""
        if self.store is None:
            return
        self.update_slice_margins()
        layer = self.particles_layer
        if layer is not None and layer in self.viewer.layers:
            table = self.store.table
            from napari_cryossl.io import particle_zyx

            zyx = particle_zyx(table)
            face, border = point_colors(table["class_number"].to_numpy(), self.store.classes)
            with self._syncing_layers():
                if len(zyx) != len(layer.data) or not np.array_equal(zyx, layer.data):
                    layer.selected_data = set()
                    layer.data = zyx
                layer.features = _features(table)
                layer.size = self.point_size
                if len(zyx):
                    layer.face_color = face
                    layer.border_color = border
                layer.refresh()
            self._n_known = len(zyx)
        if self.predictions_layer is not None and self.predictions_layer in self.viewer.layers:
            self._draw_predictions()

    @contextlib.contextmanager
    def _syncing_layers(self):
        self._syncing += 1
        try:
            yield
        finally:
            self._syncing -= 1

    def _on_store_change(self, change=None, *args, **kwargs) -> None:
        self.refresh_layers()
        self.particles_changed.emit()
        if getattr(change, "kind", None) == "classes":
            # however the class list changed (dock, script, import), every section hears it
            if self.current_class not in [0, *self.class_numbers()]:
                numbers = self.class_numbers()
                self.current_class = numbers[0] if numbers else 1
            self.classes_changed.emit()

    def _on_layer_data(self, event) -> None:
        """User edits on the particles layer -> the store (which autosaves)."""
        if self._syncing or self.store is None:
            return
        action = str(getattr(event, "action", ""))
        layer = self.particles_layer
        try:
            if action == "added":
                new = np.asarray(layer.data[self._n_known :], dtype=np.float64)
                self._n_known = len(layer.data)
                if len(new):
                    self.store.add_particles(new, source="manual", class_number=0)
            elif action == "removed":
                indices = sorted(int(i) for i in event.data_indices)
                self._n_known = len(layer.data)
                if indices:
                    self.store.remove_particles(np.asarray(indices, dtype=np.int64))
            elif action == "changed":
                indices = np.asarray(sorted(int(i) for i in event.data_indices), dtype=np.int64)
                if indices.size and len(layer.data) == len(self.store.table):
                    self.store.move_particles(
                        indices, np.asarray(layer.data[indices], dtype=np.float64)
                    )
        except Exception as exc:  # keep the viewer usable; the store is unchanged on error
            from napari_cryossl._widgets._common import notify_error

            notify_error(exc)
            self.refresh_layers()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.particles_layer:
            self.particles_layer = None
        elif layer is self.predictions_layer:
            self.predictions_layer = None
        elif layer is self.image_layer:
            self.image_layer = None

    def _remove_layer(self, attr: str) -> None:
        layer = getattr(self, attr)
        setattr(self, attr, None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _bind_class_keys(self, layer) -> None:
        """Keys 1-9 pick the current class (0: unlabel) while this layer is active."""
        session_ref = weakref.ref(self)
        for key in CLASS_KEYS:

            def choose(_layer, number=int(key)):
                session = session_ref()
                if session is not None:
                    session.set_current_class(number)

            layer.bind_key(key, choose, overwrite=True)

    def start_labelling(self) -> None:
        """Clicks on particles now assign the current class; the particles layer is activated."""
        self.require_tomogram()
        self.label_on_click = True
        predictions = self.predictions_layer
        if predictions is not None and predictions in self.viewer.layers and predictions.visible:
            layer = predictions  # correcting predictions: click the coloured calls
        else:
            layer = self.ensure_particles_layer()
            layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.mode = "pan_zoom"
        self.labelling_changed.emit(True)

    def stop_labelling(self) -> None:
        if self.label_on_click:
            self.label_on_click = False
            self.labelling_changed.emit(False)

    # ------------------------------------------------------------------ predictions
    def _has_predictions(self) -> bool:
        table = self.store.table if self.store is not None else None
        return (
            table is not None
            and "predicted_class" in table
            and bool((table["predicted_class"].to_numpy() > 0).any())
        )

    def show_predictions(self):
        """The Points layer of predictions (colour = predicted class, size/opacity = confidence)."""
        self.require_tomogram()
        layer = self.predictions_layer
        if layer is None or layer not in self.viewer.layers:
            from napari_cryossl.io import particle_zyx

            with self._syncing_layers():
                vs = self.voxel_size
                layer = self.viewer.add_points(
                    particle_zyx(self.store.table),
                    ndim=3,
                    name=f"predictions · {Path(self.tomogram.path).stem}",
                    scale=(vs, vs, vs),
                    translate=tuple(self.image_layer.translate) if self.image_layer else (0, 0, 0),
                    projection_mode="rescale_spherical",
                    border_width=0.2,
                    border_width_is_relative=True,
                    metadata={
                        _ROLE: "predictions",
                        "voxel_size": vs,
                        "tomo_name": Path(self.tomogram.path).name,
                        "tomogram_shape": tuple(int(s) for s in self.tomogram.shape),
                    },
                )
            layer.editable = False
            self._bind_class_keys(layer)
            self.predictions_layer = layer
            # An existing layer is redrawn by every store change (refresh_layers), so
            # only a new one needs drawing here: one redraw per prediction, not two.
            self._draw_predictions()
        # One view of the particles at a time: labels show as white rims in this layer.
        if self.particles_layer is not None and self.particles_layer in self.viewer.layers:
            self.particles_layer.visible = False
        layer.visible = True
        return layer

    def prediction_arrays(self):
        """(predicted_class, probability) per particle; 0 / NaN where there is no prediction."""
        table = self.store.table
        n = len(table)
        predicted = (
            table["predicted_class"].to_numpy(dtype=np.int64)
            if "predicted_class" in table
            else np.zeros(n, dtype=np.int64)
        )
        prob = (
            table["probability"].to_numpy(dtype=np.float64)
            if "probability" in table
            else np.full(n, np.nan)
        )
        return predicted, prob

    def _draw_predictions(self) -> None:
        layer = self.predictions_layer
        from napari_cryossl.io import particle_zyx

        table = self.store.table
        zyx = particle_zyx(table)
        predicted, prob = self.prediction_arrays()
        conf = np.nan_to_num(prob, nan=0.0)
        face, _ = point_colors(predicted, self.store.classes)
        # Confidence -> opacity and size, so doubtful calls recede and confident ones stand
        # out. Measured from chance (1/classes), where a call means nothing, to certainty.
        chance = 1.0 / max(len(self.store.classes), 2)
        rel = np.clip((conf - chance) / (1.0 - chance), 0.0, 1.0)
        face[:, 3] = np.where(predicted > 0, 0.3 + 0.7 * rel, 0.0)
        labelled = table["class_number"].to_numpy() > 0
        colors = class_color_table(self.store.classes, predicted)
        border = np.tile(np.array([0.75, 0.75, 0.75, 1.0]), (len(zyx), 1))
        for number, rgba in colors.items():
            border[predicted == number] = rgba
        border[labelled] = _LABELLED_RIM
        sizes = self.point_size * np.where(predicted > 0, 0.5 + 0.5 * rel, 0.6)
        features = _features(table)
        features["class_number"] = predicted  # the writer saves predictions as classes
        features["label"] = table["class_number"].to_numpy(dtype=np.int64)
        with self._syncing_layers():
            if len(zyx) != len(layer.data) or not np.array_equal(zyx, layer.data):
                layer.data = zyx
            layer.features = features
            if len(zyx):
                layer.face_color = face
                layer.border_color = border
                layer.size = sizes
                # Particles without a prediction stay visible (grey) unless a filter is set.
                layer.shown = np.where(
                    predicted > 0, conf >= self.min_confidence, self.min_confidence <= 0
                )
            layer.refresh()

    def set_min_confidence(self, value: float) -> None:
        """Hide predictions below this confidence (0 shows every particle)."""
        self.min_confidence = float(value)
        if self.predictions_layer is not None and self.predictions_layer in self.viewer.layers:
            self._draw_predictions()

    def center_on(self, index: int) -> None:
        """Centre the view on particle `index` and move the Z slider to its slice."""
        from napari_cryossl.io import particle_zyx

        zyx = particle_zyx(self.store.table)[int(index)]
        layer = self.particles_layer or self.image_layer
        world = np.asarray(layer.data_to_world(zyx)) if layer is not None else zyx * self.voxel_size
        viewer = self.viewer
        viewer.dims.set_point(range(3), tuple(world))
        displayed = list(viewer.dims.displayed)
        viewer.camera.center = tuple(world[displayed])
        for lyr in (self.particles_layer, self.predictions_layer):
            if lyr is not None and lyr in viewer.layers:
                lyr.selected_data = {int(index)}

    # ------------------------------------------------------------------ workers
    def start_worker(self, worker) -> None:
        """Start a napari thread worker at the next event-loop turn; keep it until it ends.

        The deferred start lets the caller connect the worker's signals first (a worker
        that fails at once would otherwise emit ``finished`` before anyone listens).
        """
        from qtpy.QtCore import QTimer

        self._workers.add(worker)
        worker.finished.connect(lambda w=worker: self._worker_done(w))
        if len(self._workers) == 1:
            self.busy_changed.emit(True)
        QTimer.singleShot(0, worker.start)

    def _worker_done(self, worker) -> None:
        self._workers.discard(worker)
        if not self._workers:
            self.busy_changed.emit(False)

    def quit_workers(self) -> None:
        for worker in list(self._workers):
            worker.quit()


def _features(table):
    cols = [c for c in ("class_number", "probability", "score", "source") if c in table]
    return table[cols].reset_index(drop=True).copy()
