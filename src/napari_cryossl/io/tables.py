"""The particle table every module passes around (`PARTICLE_COLUMNS`), built and checked here.

`make_particle_table` builds one with the canonical columns and dtypes, `particle_zyx`
reads its centres as ZYX voxels, and `_canonical` checks a table before it is written.
Also here: subtomogram paths (``image_name``) relative to the particle file that lists
them, as the STAR and CSV readers and writers share them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_cryossl.io.errors import InputError, _fail

#: Columns of the particle table every module passes around (docs/architecture.md).
PARTICLE_COLUMNS = [
    "x",
    "y",
    "z",
    "class_number",
    "image_name",
    "tomo_name",
    "source",
    "score",
    "probability",
]
#: Where a particle came from.
PARTICLE_SOURCES = ("manual", "auto", "imported", "simulated")

_FLOAT_COLUMNS = ("x", "y", "z", "score", "probability")
_TEXT_COLUMNS = ("image_name", "tomo_name", "source")


# ---------------------------------------------------------------------------- particle table


def make_particle_table(
    zyx=None,
    *,
    class_number=None,
    image_name=None,
    source="manual",
    score=None,
    tomo_name="",
    probability=None,
) -> pd.DataFrame:
    """Build a particle table with the canonical columns and dtypes.

    Scalars are broadcast to every particle; sequences must have one value per particle.
    The number of particles comes from `zyx`, else from the first sequence given.

    Args:
        zyx: (N, 3) centres in tomogram voxels, ZYX order; None for standalone subtomograms
            (coordinates NaN).
        class_number: 1-based classes, 0 = unlabelled (default 0).
        image_name: subtomogram file per particle, or "".
        source: one of `PARTICLE_SOURCES`, per particle or for all.
        score: picking score (NaN if none).
        tomo_name: tomogram name per particle or for all.
        probability: predicted class probability (NaN if none).

    Returns:
        DataFrame with columns `PARTICLE_COLUMNS` (x, y, z float64; class_number int64;
        text columns str; score, probability float64), index 0..N-1.

    Raises:
        InputError: wrong shapes or lengths, negative or non-integer classes, unknown source.
    """
    where = "particle table"
    n = None
    if zyx is not None:
        arr = np.asarray(zyx, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise _fail(where, f"coordinates must be (N, 3) ZYX, got shape {arr.shape}")
        n = len(arr)
    if n is None:
        for value in (image_name, class_number, score, probability, source, tomo_name):
            if value is not None and not isinstance(value, str) and np.ndim(value) > 0:
                n = len(value)
                break
        else:
            n = 0
        arr = np.full((n, 3), np.nan)
    classes = _broadcast(0 if class_number is None else class_number, n, "class_number")
    classes = _class_array(classes, where)
    sources = _broadcast(source, n, "source")
    table = pd.DataFrame(
        {
            "x": arr[:, 2].copy(),
            "y": arr[:, 1].copy(),
            "z": arr[:, 0].copy(),
            "class_number": classes,
            "image_name": _text(
                _broadcast("" if image_name is None else image_name, n, "image_name")
            ),
            "tomo_name": _text(_broadcast("" if tomo_name is None else tomo_name, n, "tomo_name")),
            "source": _text(sources),
            "score": _float_array(np.nan if score is None else score, n, "score"),
            "probability": _float_array(
                np.nan if probability is None else probability, n, "probability"
            ),
        },
        columns=PARTICLE_COLUMNS,
    )
    bad = ~table["source"].isin(PARTICLE_SOURCES)
    if bad.any():
        raise _fail(
            where,
            f"unknown source {table['source'][bad].iloc[0]!r}; expected one of {PARTICLE_SOURCES}",
        )
    return table


def particle_zyx(table: pd.DataFrame) -> np.ndarray:
    """The (N, 3) float64 ZYX voxel centres of a particle table (NaN for standalone files)."""
    missing = [c for c in ("x", "y", "z") if c not in table]
    if missing:
        raise _fail("particle table", f"missing coordinate columns {missing}")
    return np.column_stack(
        [table[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("z", "y", "x")]
    ).reshape(len(table), 3)


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, str) or np.ndim(value) == 0:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise _fail("particle table", f"{name} has {len(values)} values for {n} particles")
    return values


def _text(values: Sequence) -> pd.Series:
    out = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
    return pd.Series(out, dtype=str)


def _float_array(value, n: int, name: str) -> np.ndarray:
    try:
        return np.asarray(_broadcast(value, n, name), dtype=np.float64).reshape(n)
    except (TypeError, ValueError) as err:
        raise _fail("particle table", f"{name} must be numbers ({err})") from err


def _class_array(values, where: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise _fail(where, f"class numbers must be integers ({err})") from err
    # Beyond 2^31 a class number is a corrupt value, and int64 would overflow silently.
    bad = ~np.isfinite(arr) | (arr < 0) | (arr != np.round(arr)) | (arr > 2**31 - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(
            where,
            f"class number {values[i]!r} (particle {i}) is not a non-negative integer below "
            "2^31 (classes are 1-based; 0 = unlabelled)",
        )
    return arr.astype(np.int64)


def _canonical(table: pd.DataFrame, where: Any) -> pd.DataFrame:
    """A validated copy of `table` with exactly `PARTICLE_COLUMNS` (missing ones defaulted)."""
    if not isinstance(table, pd.DataFrame):
        raise _fail(
            where, f"expected a particle table (pandas DataFrame), got {type(table).__name__}"
        )
    n = len(table)
    has_xyz = all(c in table for c in ("x", "y", "z"))
    if not has_xyz and "image_name" not in table:
        raise _fail(where, "the particle table has neither x, y, z nor image_name columns")

    def col(name, default):
        return table[name].to_numpy() if name in table else default

    zyx = (
        np.column_stack([np.asarray(table[c], dtype=np.float64) for c in ("z", "y", "x")])
        if has_xyz
        else None
    )
    try:
        out = make_particle_table(
            zyx,
            class_number=col("class_number", 0),
            image_name=col("image_name", [""] * n),
            source=col("source", "manual"),
            score=col("score", np.nan),
            tomo_name=col("tomo_name", ""),
            probability=col("probability", np.nan),
        )
    except InputError as err:
        raise _fail(where, str(err).removeprefix("particle table: ")) from err
    return out


# ----------------------------------------------------- subtomogram paths beside particle files


def _resolve_images(names: np.ndarray, path: Path, where: Any) -> list[str]:
    """Absolute, normalised subtomogram paths; relative names are found from the STAR folder.

    RELION writes names relative to its project folder, which is a parent of the STAR
    file's folder: when the first relative name does not exist next to the STAR file, the
    nearest parent folder where it exists is used for every relative name.
    """
    folder = Path(os.path.abspath(path.parent))
    relative = [n for n in names if n and not os.path.isabs(n)]
    base = folder
    if relative and not (folder / relative[0]).exists():
        for parent in folder.parents:
            if (parent / relative[0]).exists():
                base = parent
                break
    out = []
    for i, name in enumerate(names):
        if not name:
            out.append("")
            continue
        if re.match(r"^\d+@", name):
            raise _fail(
                where,
                f"particle {i + 1}: {name!r} is an image in a stack (n@file); subtomograms "
                "must be one 3D MRC file each",
            )
        out.append(os.path.normpath(os.path.join(base, name)))
    return out


def _relative_images(names: list[str], path: Path) -> list[str]:
    """Image paths as written: relative to the file's folder when inside it, else as given."""
    folder = os.path.abspath(path.parent)
    out = []
    for name in names:
        if name and os.path.isabs(name):
            rel = os.path.relpath(name, folder)
            if not rel.startswith(os.pardir):
                name = rel
        out.append(name)
    return out
