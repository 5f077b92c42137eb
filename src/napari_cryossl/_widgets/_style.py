"""Colours and sizes of the widgets' layers: those of ``napari_cryossl.colors``.

The colours live in the core module ``colors.py`` (Qt- and napari-free), which the npe2
reader uses too; this module keeps the names the widgets import.
"""

from napari_cryossl.colors import (
    DEFAULT_POINT_SIZE,
    LABELLED_FACE_ALPHA,
    UNLABELLED_BORDER,
    UNLABELLED_FACE,
    class_color_table,
    default_class_color,
    point_colors,
    to_rgba,
)

__all__ = [
    "DEFAULT_POINT_SIZE",
    "LABELLED_FACE_ALPHA",
    "UNLABELLED_BORDER",
    "UNLABELLED_FACE",
    "class_color_table",
    "default_class_color",
    "point_colors",
    "to_rgba",
]
