"""The annotation store's file, ``<tomogram stem>.cryossl.star``: writing it, reading it back.

`AnnotationStore` (`napari_cryossl.particles.annotations`) edits particles, labels and classes;
this module holds what the file itself needs: the STAR labels of its two blocks
(``data_classes``, ``data_particles``), the checksum line that catches a file cut short
or changed outside napari-cryossl, the validation that turns any damaged row into an
`InputError` naming it, and the rules for what the file can hold (``#rrggbb`` colours;
text without quotes, control characters or 'nan').
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from napari_cryossl.io import PARTICLE_SOURCES, InputError, atomic_write, make_particle_table
from napari_cryossl.io.errors import _read_text
from napari_cryossl.io.star import _read_star_blocks, _star_float, _star_text

_CLASS_COLUMNS = ("rlnClassNumber", "cryosslClassName", "cryosslClassColor")
_PARTICLE_LABELS = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "z": "rlnCoordinateZ",
    "class_number": "rlnClassNumber",
    "score": "rlnAutopickFigureOfMerit",
    "probability": "rlnMaxValueProbDistribution",
    "predicted_class": "cryosslPredictedClass",
    "source": "cryosslSource",
    "tomo_name": "rlnTomoName",
    "image_name": "rlnImageName",
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
_TEXT = ("source", "tomo_name", "image_name")
# Text the store cannot hold: every string is written quoted, so '#' and spaces are fine,
# but quotes and control characters are not, and these tokens read back as missing values.
_STORE_BAD_CHARS = re.compile(r"[\"'\x00-\x1f\x7f]")
_NA_TOKENS = frozenset({"nan", "NaN", "<NA>"})
_CHECKSUM_PREFIX = "# napari-cryossl annotations; sha256 of the lines below: "


def _save(path: Path, table: pd.DataFrame, classes: list[dict]) -> None:
    class_frame = pd.DataFrame(
        {
            "rlnClassNumber": np.array([c["number"] for c in classes], dtype=np.int64),
            "cryosslClassName": [c["name"] for c in classes],
            "cryosslClassColor": [c["color"] for c in classes],
        }
    )
    for column in ("tomo_name", "image_name"):
        for value in table[column].unique():
            _check_store_text(str(value), column, path)
    particles = pd.DataFrame({label: table[col] for col, label in _PARTICLE_LABELS.items()})
    text = starfile.to_string(
        {"classes": class_frame, "particles": particles},
        float_format=None,  # shortest exact repr: coordinates survive bit for bit
        na_rep="nan",
        quote_all_strings=True,  # colours start with '#', which would otherwise comment
    )
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(f"{_CHECKSUM_PREFIX}{_digest(text)}\n{text}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _verify_checksum(path: Path) -> None:
    """Reject a store whose content no longer matches the checksum in its first line.

    Atomic saves never leave a torn file, but a copy cut short, a bad disk or a careless
    edit can; without this a row cut after a complete field would load silently. A file
    without the checksum line (written by hand or by another tool) is accepted as is.
    """
    text = _read_text(path, "STAR")
    first, _, rest = text.partition("\n")
    if not first.startswith(_CHECKSUM_PREFIX):
        return
    if first[len(_CHECKSUM_PREFIX) :].strip() != _digest(rest):
        raise InputError(
            f"{path}: damaged annotation file (its content does not match the checksum in its "
            "first line: truncated or changed outside napari-cryossl). Restore it from a "
            "backup, or delete that first line to accept the file as it is"
        )


def _load(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Read and validate a store file; any problem is an InputError naming it."""
    _verify_checksum(path)
    blocks = _read_star_blocks(path)
    if not {"classes", "particles"} <= set(blocks):
        raise InputError(
            f"{path}: not a napari-cryossl annotation file (needs data_classes and "
            f"data_particles blocks, found {', '.join('data_' + b for b in blocks)})"
        )
    classes = _load_classes(blocks["classes"], f"{path} (data_classes)")
    table = _load_particles(blocks["particles"], f"{path} (data_particles)")
    defined = {c["number"] for c in classes} | {0}
    for col in ("class_number", "predicted_class"):
        unknown = ~table[col].isin(defined)
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise InputError(
                f"{path}: particle {i + 1} has {col} {int(table[col].iloc[i])}, which "
                "data_classes does not define"
            )
    return table, classes


def _as_frame(block, where: str) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict) and block:
        return pd.DataFrame({k: [v] for k, v in block.items()})
    raise InputError(f"{where}: empty or malformed block")


def _load_classes(block, where: str) -> list[dict]:
    frame = _as_frame(block, where)
    missing = [c for c in _CLASS_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
    _check_complete(frame, list(_CLASS_COLUMNS[1:]), where)
    numbers = _star_float(frame, "rlnClassNumber", where)
    names = _star_text(frame, "cryosslClassName", len(frame))
    colors = _star_text(frame, "cryosslClassColor", len(frame))
    classes = []
    for i, (number, name, color) in enumerate(zip(numbers, names, colors, strict=True)):
        if not (math.isfinite(number) and number >= 1 and number == int(number)):
            raise InputError(f"{where}: row {i + 1}: class number {number} is not 1, 2, ...")
        if not name:
            raise InputError(f"{where}: row {i + 1}: class {int(number)} has no name")
        classes.append({"number": int(number), "name": name, "color": _hex_color(color, where)})
    seen_numbers = [c["number"] for c in classes]
    if len(set(seen_numbers)) != len(seen_numbers):
        raise InputError(f"{where}: a class number appears twice")
    names_cf = [c["name"].casefold() for c in classes]
    if len(set(names_cf)) != len(names_cf):
        raise InputError(f"{where}: a class name appears twice")
    return classes


def _load_particles(block, where: str) -> pd.DataFrame:
    frame = _as_frame(block, where)
    missing = [label for label in _PARTICLE_LABELS.values() if label not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
    n = len(frame)
    _check_complete(frame, [_PARTICLE_LABELS[c] for c in _TEXT], where)
    values = {}
    for col in ("x", "y", "z", "score", "probability", "class_number", "predicted_class"):
        values[col] = _star_float(frame, _PARTICLE_LABELS[col], where)
    texts = {col: _star_text(frame, _PARTICLE_LABELS[col], n) for col in _TEXT}
    images = texts["image_name"] != ""
    coords = np.column_stack([values[c] for c in ("z", "y", "x")]).reshape(n, 3)
    bad = ~np.isfinite(coords).all(axis=1) & ~images
    if bad.any():
        raise InputError(f"{where}: particle {int(np.flatnonzero(bad)[0]) + 1} has no coordinates")
    unknown = ~np.isin(texts["source"], PARTICLE_SOURCES)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise InputError(f"{where}: particle {i + 1}: unknown source {texts['source'][i]!r}")
    for col in ("class_number", "predicted_class"):
        v = values[col]
        if (~np.isfinite(v) | (v < 0) | (v != np.round(v))).any():
            raise InputError(f"{where}: {col} must be non-negative integers")
    table = make_particle_table(
        coords,
        class_number=values["class_number"].astype(np.int64),
        image_name=texts["image_name"],
        source=texts["source"],
        score=values["score"],
        tomo_name=texts["tomo_name"],
        probability=values["probability"],
    )
    table["predicted_class"] = values["predicted_class"].astype(np.int64)
    return table


def _check_complete(frame: pd.DataFrame, labels: list[str], where: str) -> None:
    """Text fields are always written quoted, so a missing one means a damaged row."""
    for label in labels:
        missing = frame[label].isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise InputError(f"{where}: row {i + 1} is incomplete ({label} is missing)")


def _hex_color(color, where: Any) -> str:
    """Normalise a colour to lowercase ``#rrggbb``."""
    if isinstance(color, str):
        match = _HEX.match(color.strip())
        if match:
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(ch * 2 for ch in digits)
            return "#" + digits[:6].lower()
        try:  # a named colour ("orange", "tab:blue"): matplotlib knows them all
            from matplotlib.colors import to_hex

            return to_hex(color.strip()).lower()
        except (ImportError, ValueError) as err:
            raise InputError(f"{where}: {color!r} is not a colour (use #rrggbb)") from err
    try:
        rgb = np.asarray(color, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {color!r} is not a colour (use #rrggbb)") from err
    if rgb.size not in (3, 4) or not np.isfinite(rgb).all() or (rgb < 0).any():
        raise InputError(f"{where}: {color!r} is not an RGB(A) colour")
    rgb = rgb[:3]
    if (rgb > 1).any():  # 0-255 integers
        if (rgb > 255).any():
            raise InputError(f"{where}: {color!r} is not an RGB(A) colour")
        rgb = rgb / 255.0
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in rgb)


def _check_store_text(value: str, what: str, where: Any) -> str:
    if _STORE_BAD_CHARS.search(value) or value in _NA_TOKENS:
        raise InputError(
            f"{where}: {what} {value!r} cannot be saved (quotes, tabs, line breaks and "
            "'nan' are not allowed); rename it"
        )
    return value
