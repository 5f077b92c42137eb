"""Labelling particles in the viewer: click-to-label and the class keys.

While click-to-label is on (`Session.start_labelling`), a mouse press anywhere in the
canvas labels the particle under the cursor with the session's current class (the
predictions layer is hit first, so correcting predictions means clicking the coloured
calls). The keys 0-9 choose the current class while a particles or predictions layer is
active (0: unlabel). The state (`label_on_click`, `current_class`) stays on the session;
this module only turns clicks and keys into session calls.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_cryossl._widgets._session import Session

#: Keys that switch the current class while a particles layer is active (0 = unlabel).
CLASS_KEYS = tuple(str(i) for i in range(10))


def bind_class_keys(layer, session: Session) -> None:
    """Keys 1-9 pick the current class (0: unlabel) while this layer is active."""
    session_ref = weakref.ref(session)
    for key in CLASS_KEYS:

        def choose(_layer, number=int(key)):
            session = session_ref()
            if session is not None:
                session.set_current_class(number)

        layer.bind_key(key, choose, overwrite=True)


class ClickLabelling:
    """Click-to-label for one session: what a click hits, and switching the mode on/off."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.on = False  # clicks label particles (the session reads it as label_on_click)

    def particle_at(
        self, position_world, *, view_direction=None, dims_displayed=None
    ) -> int | None:
        """Index of the particle drawn at a world position (what a click there hits), or None."""
        session = self._session
        for layer in (session.predictions_layer, session.particles_layer):
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

    def on_viewer_click(self, viewer, event) -> None:
        """Mouse press anywhere in the canvas: label the particle under the cursor."""
        session = self._session
        if not self.on or session.store is None:
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
            session.label_particles([index])

    def start(self) -> None:
        """Clicks on particles now assign the current class; the particles layer is activated."""
        session = self._session
        session.require_tomogram()
        self.on = True
        predictions = session.predictions_layer
        if (
            predictions is not None
            and predictions in session.viewer.layers
            and predictions.visible
        ):
            layer = predictions  # correcting predictions: click the coloured calls
        else:
            layer = session.ensure_particles_layer()
            layer.visible = True
        session.viewer.layers.selection.active = layer
        layer.mode = "pan_zoom"
        session.labelling_changed.emit(True)

    def stop(self) -> None:
        """Clicks no longer label."""
        session = self._session
        if self.on:
            self.on = False
            session.labelling_changed.emit(False)
