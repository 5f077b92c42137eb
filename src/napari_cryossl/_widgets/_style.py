"""Colours and sizes of the widgets' layers: those of ``napari_cryossl.particles.colors``.

The colours live in the core module ``colors.py`` (Qt- and napari-free), which the npe2
reader uses too; this module keeps the names the widgets import.
"""

from napari_cryossl.particles.colors import (
    DEFAULT_POINT_SIZE,
    LABELLED_FACE_ALPHA,
    UNLABELLED_BORDER,
    UNLABELLED_FACE,
    class_color_table,
    default_class_color,
    point_colors,
    to_rgba,
)

#: Markers are never drawn smaller than this many voxels across (a diameter typed in the
#: wrong unit would otherwise shrink every disc to a dot), nor under this many screen
#: pixels at any zoom.
MIN_MARKER_VOXELS = 4.0
MIN_MARKER_PX = 6.0

__all__ = [
    "DEFAULT_POINT_SIZE",
    "MIN_MARKER_PX",
    "MIN_MARKER_VOXELS",
    "LABELLED_FACE_ALPHA",
    "UNLABELLED_BORDER",
    "UNLABELLED_FACE",
    "class_color_table",
    "default_class_color",
    "point_colors",
    "to_rgba",
]
