"""The napari layers of a `Session`, drawn from its annotation store and edited back into it.

The store is the single source of truth; the particles layer and the predictions layer
are views of it. `LayerSync` draws them (`refresh`, `show_predictions`), turns user edits
on the particles layer (add, delete, move) into store calls, and forgets layers the user
deletes. While it writes to a layer itself (`syncing`), the layer's own events are
ignored, so a redraw never comes back as an edit. The layers themselves stay on the
session (`session.particles_layer`, `session.predictions_layer`, `session.image_layer`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_cryossl._widgets._click_labelling import bind_class_keys
from napari_cryossl._widgets._style import (
    MIN_MARKER_PX,
    MIN_MARKER_VOXELS,
    class_color_table,
    point_colors,
)

if TYPE_CHECKING:
    from napari_cryossl._widgets._session import Session

#: Layers this session draws (tomogram, particles, predictions) carry this key in their
#: metadata.
_ROLE = "napari_cryossl"
#: Points whose label came from a person get this rim in the predictions layer.
_LABELLED_RIM = np.array([1.0, 1.0, 1.0, 1.0])


class LayerSync:
    """Keeps a session's particles and predictions layers and its store in step."""

    def __init__(self, session: Session) -> None:
        self._session = session
        #: the layers it keeps (the session reads them): the open tomogram, its particles
        #: and, once there are predictions, the particles coloured by predicted class
        self.image_layer = None
        self.particles_layer = None
        self.predictions_layer = None
        self._syncing = 0
        self._n_known = 0  # particles the layer had when last drawn from the store

    # ------------------------------------------------------------------ particles layer
    def find_image_layer(self, path: Path):
        """The viewer's tomogram layer opened from `path` by this plugin, or None."""
        for layer in self._session.viewer.layers:
            meta = layer.metadata or {}
            if meta.get(_ROLE) == "tomogram" and Path(meta.get("path", "")) == path:
                return layer
        return None

    def ensure_particles_layer(self):
        """The Points layer that shows (and edits) the store's particles, created if needed."""
        session = self._session
        session.require_tomogram()
        layer = session.particles_layer
        if layer is None or layer not in session.viewer.layers:
            from napari_cryossl._reader import points_kwargs

            kwargs = points_kwargs(
                session.store.table,
                voxel_size=session.voxel_size,
                point_size=marker_size(session),
                classes=session.store.classes,
            )
            data = kwargs.pop("data")
            kwargs["translate"] = (
                tuple(session.image_layer.translate) if session.image_layer else (0, 0, 0)
            )
            with self.syncing():
                layer = session.viewer.add_points(
                    data,
                    name=f"particles · {Path(session.tomogram.path).stem}",
                    metadata={
                        _ROLE: "particles",
                        "path": str(session.store.path),
                        "voxel_size": session.voxel_size,
                        "tomo_name": Path(session.tomogram.path).name,
                        "tomogram_shape": tuple(int(s) for s in session.tomogram.shape),
                    },
                    **kwargs,
                )
            self._n_known = len(data)
            layer.canvas_size_limits = (MIN_MARKER_PX, layer.canvas_size_limits[1])
            self.update_slice_margins()
            layer.events.data.connect(self.on_layer_data)
            bind_class_keys(layer, session)
            self.particles_layer = layer
        return layer

    def update_slice_margins(self) -> None:
        """Make the viewer's slices as thick as a particle, so each particle shows (as the
        disc where its sphere cuts the plane) on every slice it spans, not only on its centre.

        Image layers ignore the margins (their projection mode is "none"); Points layers
        with projection_mode "rescale_spherical" use them.
        """
        session = self._session
        dims = session.viewer.dims
        radius = 0.5 * marker_size(session) * session.voxel_size  # world units (Å)
        if dims.ndim >= 3:
            dims.margin_left = (radius,) * dims.ndim
            dims.margin_right = (radius,) * dims.ndim

    def refresh(self) -> None:
        """Redraw the particles (and predictions) layers from the store."""
        session = self._session
        if session.store is None:
            return
        self.update_slice_margins()
        layer = session.particles_layer
        if layer is not None and layer in session.viewer.layers:
            table = session.store.table
            from napari_cryossl.io import particle_zyx

            zyx = particle_zyx(table)
            face, border = point_colors(table["class_number"].to_numpy(), session.store.classes)
            with self.syncing():
                if len(zyx) != len(layer.data) or not np.array_equal(zyx, layer.data):
                    layer.selected_data = set()
                    layer.data = zyx
                layer.features = _features(table)
                layer.size = marker_size(session)
                if len(zyx):
                    layer.face_color = face
                    layer.border_color = border
                layer.refresh()
            self._n_known = len(zyx)
        predictions = session.predictions_layer
        if predictions is not None and predictions in session.viewer.layers:
            self.draw_predictions()

    @contextlib.contextmanager
    def syncing(self):
        """Layer events inside this block come from the session itself, not the user."""
        self._syncing += 1
        try:
            yield
        finally:
            self._syncing -= 1

    def on_layer_data(self, event) -> None:
        """User edits on the particles layer -> the store (which autosaves)."""
        session = self._session
        if self._syncing or session.store is None:
            return
        action = str(getattr(event, "action", ""))
        layer = session.particles_layer
        try:
            if action == "added":
                new = np.asarray(layer.data[self._n_known :], dtype=np.float64)
                self._n_known = len(layer.data)
                if len(new):
                    session.store.add_particles(new, source="manual", class_number=0)
            elif action == "removed":
                indices = sorted(int(i) for i in event.data_indices)
                self._n_known = len(layer.data)
                if indices:
                    session.store.remove_particles(np.asarray(indices, dtype=np.int64))
            elif action == "changed":
                indices = np.asarray(sorted(int(i) for i in event.data_indices), dtype=np.int64)
                if indices.size and len(layer.data) == len(session.store.table):
                    session.store.move_particles(
                        indices, np.asarray(layer.data[indices], dtype=np.float64)
                    )
        except Exception as exc:  # keep the viewer usable; the store is unchanged on error
            from napari_cryossl._widgets._common import notify_error

            notify_error(exc)
            self.refresh()

    def on_layer_removed(self, event) -> None:
        """A layer was deleted from the viewer: forget it if it is one of the session's."""
        session = self._session
        layer = event.value
        if layer is session.particles_layer:
            self.particles_layer = None
        elif layer is session.predictions_layer:
            self.predictions_layer = None
        elif layer is session.image_layer:
            self.image_layer = None

    def remove_layer(self, attr: str) -> None:
        """Forget the layer `attr` and delete it from the viewer."""
        session = self._session
        layer = getattr(self, attr)
        setattr(self, attr, None)
        if layer is not None and layer in session.viewer.layers:
            session.viewer.layers.remove(layer)

    # ------------------------------------------------------------------ predictions layer
    def has_predictions(self) -> bool:
        """Whether the store holds a prediction for any particle."""
        store = self._session.store
        table = store.table if store is not None else None
        return (
            table is not None
            and "predicted_class" in table
            and bool((table["predicted_class"].to_numpy() > 0).any())
        )

    def show_predictions(self):
        """The Points layer of predictions (colour = predicted class, size/opacity = confidence)."""
        session = self._session
        session.require_tomogram()
        layer = session.predictions_layer
        if layer is None or layer not in session.viewer.layers:
            from napari_cryossl.io import particle_zyx

            with self.syncing():
                vs = session.voxel_size
                layer = session.viewer.add_points(
                    particle_zyx(session.store.table),
                    ndim=3,
                    name=f"predictions · {Path(session.tomogram.path).stem}",
                    scale=(vs, vs, vs),
                    translate=(
                        tuple(session.image_layer.translate) if session.image_layer else (0, 0, 0)
                    ),
                    projection_mode="rescale_spherical",
                    border_width=0.2,
                    border_width_is_relative=True,
                    metadata={
                        _ROLE: "predictions",
                        "voxel_size": vs,
                        "tomo_name": Path(session.tomogram.path).name,
                        "tomogram_shape": tuple(int(s) for s in session.tomogram.shape),
                    },
                )
            layer.editable = False
            layer.canvas_size_limits = (MIN_MARKER_PX, layer.canvas_size_limits[1])
            bind_class_keys(layer, session)
            self.predictions_layer = layer
            # An existing layer is redrawn by every store change (refresh), so only a new
            # one needs drawing here: one redraw per prediction, not two.
            self.draw_predictions()
        # One view of the particles at a time: labels show as white rims in this layer.
        particles = session.particles_layer
        if particles is not None and particles in session.viewer.layers:
            particles.visible = False
        layer.visible = True
        return layer

    def prediction_arrays(self):
        """(predicted_class, probability) per particle; 0 / NaN where there is no prediction."""
        table = self._session.store.table
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

    def draw_predictions(self) -> None:
        """Redraw the predictions layer from the store (colours, sizes, confidence filter)."""
        session = self._session
        layer = session.predictions_layer
        from napari_cryossl.io import particle_zyx

        table = session.store.table
        zyx = particle_zyx(table)
        predicted, prob = self.prediction_arrays()
        conf = np.nan_to_num(prob, nan=0.0)
        face, _ = point_colors(predicted, session.store.classes)
        # Confidence -> opacity and size, so doubtful calls recede and confident ones stand
        # out. Measured from chance (1/classes), where a call means nothing, to certainty.
        chance = 1.0 / max(len(session.store.classes), 2)
        rel = np.clip((conf - chance) / (1.0 - chance), 0.0, 1.0)
        face[:, 3] = np.where(predicted > 0, 0.3 + 0.7 * rel, 0.0)
        labelled = table["class_number"].to_numpy() > 0
        colors = class_color_table(session.store.classes, predicted)
        border = np.tile(np.array([0.75, 0.75, 0.75, 1.0]), (len(zyx), 1))
        for number, rgba in colors.items():
            border[predicted == number] = rgba
        border[labelled] = _LABELLED_RIM
        sizes = marker_size(session) * np.where(predicted > 0, 0.5 + 0.5 * rel, 0.6)
        features = _features(table)
        features["class_number"] = predicted  # the writer saves predictions as classes
        features["label"] = table["class_number"].to_numpy(dtype=np.int64)
        with self.syncing():
            if len(zyx) != len(layer.data) or not np.array_equal(zyx, layer.data):
                layer.data = zyx
            layer.features = features
            if len(zyx):
                layer.face_color = face
                layer.border_color = border
                layer.size = sizes
                # Particles without a prediction stay visible (grey) unless a filter is set.
                layer.shown = np.where(
                    predicted > 0, conf >= session.min_confidence, session.min_confidence <= 0
                )
            layer.refresh()

    # ------------------------------------------------------------------ navigation
    def center_on(self, index: int) -> None:
        """Centre the view on particle `index` and move the Z slider to its slice."""
        from napari_cryossl.io import particle_zyx

        session = self._session
        zyx = particle_zyx(session.store.table)[int(index)]
        layer = session.particles_layer or session.image_layer
        world = (
            np.asarray(layer.data_to_world(zyx)) if layer is not None else zyx * session.voxel_size
        )
        viewer = session.viewer
        viewer.dims.set_point(range(3), tuple(world))
        displayed = list(viewer.dims.displayed)
        viewer.camera.center = tuple(world[displayed])
        for lyr in (session.particles_layer, session.predictions_layer):
            if lyr is not None and lyr in viewer.layers:
                lyr.selected_data = {int(index)}
        # the viewer goes to a particle: it must be marked there (Grad-CAM hides markers)
        show_markers(session)


def marker_size(session) -> float:
    """Marker diameter in voxels: the particle's, but at least `MIN_MARKER_VOXELS`."""
    return max(float(session.point_size), MIN_MARKER_VOXELS)


def show_markers(session) -> bool:
    """Show the particles again when none of the session's marker layers is visible (a
    Grad-CAM heatmap hides them): the predictions when there are any, else the particles.
    Returns whether a layer was shown."""
    viewer = session.viewer
    layers = [
        layer for layer in (session.predictions_layer, session.particles_layer)
        if layer is not None and layer in viewer.layers
    ]
    if not layers or any(layer.visible for layer in layers):
        return False
    layers[0].visible = True
    return True


def _features(table):
    cols = [c for c in ("class_number", "probability", "score", "source") if c in table]
    return table[cols].reset_index(drop=True).copy()
