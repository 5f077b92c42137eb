"""Class colours of particles: the palette, a colour per class number, point colours.

One source for the colours that the annotation store gives new classes, that the npe2
reader gives a particle file's points and that the widgets draw, so that a class has
the same colour everywhere. Unlabelled particles (class 0) are hollow grey rings;
labelled ones are filled with their class colour, half transparent.

Colours are RGBA float arrays in [0, 1], the form napari's Points layer takes per point.
This module needs numpy only (matplotlib, a core dependency, parses colour names); it
imports neither Qt nor napari.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_PALETTE",
    "DEFAULT_POINT_SIZE",
    "LABELLED_FACE_ALPHA",
    "UNLABELLED_BORDER",
    "UNLABELLED_FACE",
    "class_color_table",
    "default_class_color",
    "point_colors",
    "to_rgba",
]

#: Colours given to new classes, in order (matplotlib's tab10: distinct, colour-blind aware).
DEFAULT_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

#: Unlabelled particles: hollow (transparent face) with a grey rim.
UNLABELLED_FACE = np.array([0.0, 0.0, 0.0, 0.0])
UNLABELLED_BORDER = np.array([0.75, 0.75, 0.75, 1.0])

#: Labelled particles: filled with the class colour, half transparent so the density
#: underneath stays visible, with an opaque rim in the same colour.
LABELLED_FACE_ALPHA = 0.5

#: Default point size (voxels) when the particle diameter is unknown.
DEFAULT_POINT_SIZE = 12.0


def default_class_color(class_number: int) -> str:
    """The default colour (hex) of a 1-based class number."""
    if class_number < 1:
        return "#bfbfbf"
    if class_number <= len(DEFAULT_PALETTE):
        return DEFAULT_PALETTE[class_number - 1]
    # Golden-ratio hue steps keep generated colours apart from each other.
    hue = (0.11 + 0.618034 * class_number) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def to_rgba(color) -> np.ndarray:
    """A colour (hex, name, RGB(A) tuple in [0, 1]) as one RGBA float array.

    Raises:
        ValueError: ``color`` is not a colour.
    """
    from matplotlib.colors import to_rgba as _mpl_rgba

    if not isinstance(color, str):
        color = tuple(np.asarray(color, dtype=float).reshape(-1))
    return np.asarray(_mpl_rgba(color), dtype=float)


def class_color_table(classes: Sequence[Mapping] | None, numbers) -> dict[int, np.ndarray]:
    """RGBA colour per class number, from the store's class list where it has one.

    Args:
        classes: dicts with "number" and "color" (the annotation store's `classes`), or None.
        numbers: class numbers that need a colour (others in `classes` are included too).
    """
    table: dict[int, np.ndarray] = {}
    for cls in classes or ():
        table[int(cls["number"])] = to_rgba(cls.get("color") or default_class_color(cls["number"]))
    for n in np.unique(np.asarray(numbers, dtype=np.int64)):
        n = int(n)
        if n > 0 and n not in table:
            table[n] = to_rgba(default_class_color(n))
    return table


def point_colors(class_numbers, classes: Sequence[Mapping] | None = None):
    """Face and border colours for particles by class; unlabelled (0) are hollow grey rings.

    Args:
        class_numbers: (N,) 1-based classes, 0 = unlabelled.
        classes: the annotation store's class list (number, name, color), or None for
            the default palette.

    Returns:
        (face, border): two (N, 4) RGBA float arrays.
    """
    numbers = np.asarray(class_numbers, dtype=np.int64).reshape(-1)
    face = np.tile(UNLABELLED_FACE, (len(numbers), 1))
    border = np.tile(UNLABELLED_BORDER, (len(numbers), 1))
    for n, rgba in class_color_table(classes, numbers).items():
        mask = numbers == n
        face[mask] = rgba
        face[mask, 3] = LABELLED_FACE_ALPHA * rgba[3]
        border[mask] = rgba
    return face, border
