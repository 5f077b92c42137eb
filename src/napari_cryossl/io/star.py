"""RELION STAR files: the parser, the particle block (RELION 3/4/5, subtomogram lists), the writer's columns.

Values are read as text and converted column by column, so that nothing is lost or
reinterpreted; every parser failure becomes an `InputError`. `replace_star_columns`
rewrites chosen columns of a file and keeps everything else in it.
"""

from __future__ import annotations

import linecache
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.coordinates import _Geometry, _rescale_pixels
from napari_cryossl.io.errors import (
    InputWarning,
    _fail,
    _read_text,
)
from napari_cryossl.io.tables import _class_array, _resolve_images, make_particle_table

# RELION labels.
_COORD = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
_CENTRED = (
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
)
_ORIGINS = (
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnOriginZAngst",
    "rlnOriginX",
    "rlnOriginY",
    "rlnOriginZ",
)
_IMAGE = "rlnImageName"
_TOMO = "rlnTomoName"
_MICROGRAPH = "rlnMicrographName"
_CLASS = "rlnClassNumber"
_PROBABILITY = "rlnMaxValueProbDistribution"
_SCORE = "rlnAutopickFigureOfMerit"
_TS_PIXEL = "rlnTomoTiltSeriesPixelSize"  # Å per unbinned tilt-series pixel (RELION 4/5)
_OPTICS_GROUP = "rlnOpticsGroup"
_KNOWN_STAR = (*_COORD, *_CENTRED, _IMAGE)  # a particle block needs at least one of these

# starfile reads these tokens as missing values, whatever the column.
_STAR_NA_TOKENS = frozenset({"nan", "NaN", "<NA>"})
# Characters that cannot survive a STAR round trip through starfile/pandas: quotes are
# rewritten, '#' starts a comment, whitespace other than ' ' splits or ends the row.
_STAR_BAD_CHARS = re.compile(r"[\"'#\x00-\x1f\x7f]")


def _read_star_blocks(path: Path) -> dict[str, Any]:
    """All data blocks of a STAR file, every value read as text (None-safe).

    Values stay strings so that nothing is lost or reinterpreted (a tomogram called "001"
    stays "001"); callers convert the columns they use. starfile raises assorted exception
    types on malformed text (ValueError, TypeError, pandas parser errors...), so any
    exception from the parser becomes an InputError naming the file.
    """
    text = _read_text(path, "STAR")
    meaningful = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not meaningful:
        raise _fail(path, "empty STAR file (no data blocks)")
    if not any(ln.lstrip().startswith("data_") for ln in meaningful):
        raise _fail(path, "not a STAR file (no 'data_' block)")
    labels = sorted(set(re.findall(r"^[ \t]*_(\S+)", text, flags=re.MULTILINE)))
    # starfile reads lines through linecache; clear it so that an earlier read of the same
    # name (e.g. before an atomic replace, or one that failed midway) cannot leak in.
    linecache.clearcache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=labels)
    except Exception as err:  # noqa: BLE001 - third-party parser, see docstring
        raise _fail(path, f"not a readable STAR file ({type(err).__name__}: {err})") from err
    finally:
        linecache.clearcache()
    if not isinstance(blocks, dict) or not blocks:
        raise _fail(path, "empty STAR file (no data blocks)")
    return blocks


def _block_frame(block) -> pd.DataFrame | None:
    """A loop block as is; a single-row (simple) block as a one-row DataFrame."""
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict) and block:
        return pd.DataFrame({k: [v] for k, v in block.items()})
    return None


def _particle_block_name(blocks: Mapping[str, Any], path: Path) -> str:
    """The block holding particles: ``particles`` if present, else the first with known columns."""
    candidates = []
    if "particles" in blocks:
        candidates.append("particles")
    candidates += [name for name in blocks if name != "particles"]
    for name in candidates:
        frame = _block_frame(blocks[name])
        if frame is not None and any(c in frame.columns for c in _KNOWN_STAR):
            return name
    described = "; ".join(
        f"data_{name}: {', '.join(map(str, frame.columns[:8]))}"
        + (", ..." if len(frame.columns) > 8 else "")
        for name, frame in ((n, _block_frame(b)) for n, b in blocks.items())
        if frame is not None
    )
    raise _fail(
        path,
        "no particle block: no block has rlnCoordinateX/Y/Z, rlnCenteredCoordinateX/Y/ZAngst "
        f"or rlnImageName columns (found {described or 'no columns'})",
    )


def _read_star_particles(
    path: Path, geometry: _Geometry, source: str, allow_missing: bool
) -> tuple[pd.DataFrame, dict]:
    blocks = _read_star_blocks(path)
    name = _particle_block_name(blocks, path)
    frame = _block_frame(blocks[name])
    where = f"{path} (data_{name})"
    dup = [c for c in frame.columns[frame.columns.duplicated()] if c in (*_KNOWN_STAR, _CLASS)]
    if dup:
        raise _fail(where, f"column {dup[0]} appears more than once")
    n = len(frame)
    attrs: dict[str, Any] = {}
    has_px = [c in frame.columns for c in _COORD]
    has_a = [c in frame.columns for c in _CENTRED]
    for labels, present in ((_COORD, has_px), (_CENTRED, has_a)):
        if any(present) and not all(present):
            have = ", ".join(c for c, p in zip(labels, present, strict=True) if p)
            lack = ", ".join(c for c, p in zip(labels, present, strict=True) if not p)
            raise _fail(where, f"has {have} but not {lack}: 3D coordinates need all three")
    images = _star_text(frame, _IMAGE, n)
    tomo = _star_text(frame, _TOMO if _TOMO in frame.columns else _MICROGRAPH, n)
    sizes, voxel = geometry.per_row(tomo)
    known = np.isfinite(sizes).all(axis=1) & np.isfinite(voxel)
    centres = geometry.centres(tomo, sizes, voxel)
    unresolved = np.zeros(n, dtype=bool)
    if all(has_a) and (known.all() or not all(has_px)):
        if not known.all() and not allow_missing:
            i = int(np.flatnonzero(~known)[0])
            if not geometry.given:
                problem = "need the tomogram's shape and voxel size to become voxels: open or "
                problem += "pass the tomogram (tomogram_shape=..., voxel_size=...)"
            else:
                problem = f"need the shape and voxel size of tomogram {tomo[i]!r} (particle "
                problem += f"{i + 1}), which were not given"
            raise _fail(
                where,
                "RELION-5 coordinates (rlnCenteredCoordinateX/Y/ZAngst, Å from the tomogram "
                f"centre) {problem}",
            )
        xyz_a = np.column_stack([_star_float(frame, c, where) for c in _CENTRED]).reshape(n, 3)
        # Same arithmetic as centred_to_voxels (RELION 5: Å / pixel size + size / 2), with
        # RELION's own centre (size / 2 unbinned pixels) when the tomogram's record is known.
        xyz = xyz_a / voxel[:, None] + centres
        unresolved = ~known  # NaN coordinates, kept only with allow_missing_geometry
        attrs["format"] = "relion5"
    elif all(has_px):
        xyz = np.column_stack([_star_float(frame, c, where) for c in _COORD]).reshape(n, 3)
        attrs["format"] = "relion3/4"
        # RELION 4 writes pixels of the unbinned tilt series: with that pixel size (the
        # file's own, else the tomogram set's) and the tomogram's voxel size, rescale.
        pixel = _file_pixel_sizes(blocks, frame, where)
        pixel = np.where(np.isfinite(pixel), pixel, geometry.pixel_sizes(tomo))
        rescaled = _rescale_pixels(xyz, pixel, voxel)
        if not np.array_equal(rescaled, xyz, equal_nan=True):
            xyz = rescaled
            attrs["rescaled"] = True
        elif n and np.isfinite(pixel).all() and len(set(pixel.tolist())) == 1:
            attrs["voxel_size"] = float(pixel[0])  # the pixels as written
    else:
        xyz = np.full((n, 3), np.nan)
        attrs["format"] = "subtomograms"
    missing = ~np.isfinite(xyz).all(axis=1) & (images == "") & ~unresolved
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise _fail(where, f"particle {i + 1} has no finite coordinates and no rlnImageName")
    if any(c in frame.columns for c in _ORIGINS):
        shifts = [_star_float(frame, c, where) for c in _ORIGINS if c in frame.columns]
        if any(np.nan_to_num(s).any() for s in shifts):
            warnings.warn(
                f"{where}: rlnOriginX/Y/Z shifts are not applied; particle centres are the "
                "rlnCoordinate / rlnCenteredCoordinate values as written",
                InputWarning,
                stacklevel=4,
            )
    classes = _star_class(frame, where)
    table = make_particle_table(
        xyz[:, ::-1],
        class_number=classes,
        image_name=_resolve_images(images, path, where),
        source=source,
        score=_star_float(frame, _SCORE, where, finite=False),
        tomo_name=tomo,
        probability=_star_float(frame, _PROBABILITY, where, finite=False),
    )
    pixel = _optics_pixel_size(blocks, attrs["format"])
    if pixel is not None and not attrs.get("rescaled") and "voxel_size" not in attrs:
        attrs["voxel_size"] = pixel
    return table, attrs


def _star_text(frame: pd.DataFrame, label: str, n: int) -> np.ndarray:
    if label not in frame.columns:
        return np.full(n, "", dtype=object)
    values = frame[label]
    return np.array(["" if pd.isna(v) else str(v) for v in values], dtype=object)


def _star_float(frame: pd.DataFrame, label: str, where: Any, *, finite: bool = True) -> np.ndarray:
    """A numeric column (NaN where absent); non-numbers (and non-finite if `finite`) raise."""
    n = len(frame)
    if label not in frame.columns:
        return np.full(n, np.nan)
    raw = frame[label]
    if raw.dtype.kind in "fiu":
        values = raw.to_numpy(dtype=np.float64)
        bad_text = np.zeros(n, dtype=bool)
    else:
        text = raw.astype(object).where(raw.notna(), None)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad_text = np.isnan(values) & text.notna().to_numpy()
    if bad_text.any():
        i = int(np.flatnonzero(bad_text)[0])
        raise _fail(where, f"particle {i + 1}: {label} = {raw.iloc[i]!r} is not a number")
    if finite:
        # NaN is allowed here (rows that are subtomogram files); infinities never are.
        if np.isinf(values).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise _fail(where, f"particle {i + 1}: {label} is not finite ({values[i]})")
    return values


def _star_class(frame: pd.DataFrame, where: Any) -> np.ndarray:
    if _CLASS not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    values = _star_float(frame, _CLASS, where)
    return _class_array(values, where)


def _optics_pixel_size(blocks: Mapping[str, Any], flavour: str) -> float | None:
    """Pixel size from an optics block, in the unit the coordinates use (if recorded)."""
    optics = _block_frame(blocks.get("optics")) if "optics" in blocks else None
    if optics is None or len(optics) == 0:
        return None
    labels = ("rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize")
    if flavour == "subtomograms":
        labels = ("rlnImagePixelSize",)
    for label in labels:
        if label in optics.columns:
            value = pd.to_numeric(optics[label].astype(object), errors="coerce").iloc[0]
            if value is not None and np.isfinite(value) and value > 0:
                return float(value)
    return None


def _file_pixel_sizes(blocks: Mapping[str, Any], frame: pd.DataFrame, where) -> np.ndarray:
    """(n,) Å per pixel of each particle's rlnCoordinateX/Y/Z as the file records it; NaN
    where it does not.

    ``rlnTomoTiltSeriesPixelSize`` in the particle block, else in the optics block (per
    ``rlnOpticsGroup`` when both blocks carry it, else the optics block's one value). RELION
    4 writes rlnCoordinateX/Y/Z in pixels of the unbinned tilt series.
    """
    n = len(frame)
    if _TS_PIXEL in frame.columns:
        values = _star_float(frame, _TS_PIXEL, where, finite=False)
        bad = np.isfinite(values) & (values <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(where, f"particle {i + 1}: {_TS_PIXEL} = {values[i]:g} is not positive")
        return values
    optics = _block_frame(blocks.get("optics")) if "optics" in blocks else None
    if optics is None or len(optics) == 0 or _TS_PIXEL not in optics.columns:
        return np.full(n, np.nan)
    sizes = pd.to_numeric(optics[_TS_PIXEL].astype(object), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    sizes = np.where(sizes > 0, sizes, np.nan)
    if _OPTICS_GROUP in optics.columns and _OPTICS_GROUP in frame.columns:
        groups = pd.to_numeric(optics[_OPTICS_GROUP].astype(object), errors="coerce")
        by_group = {g: v for g, v in zip(groups.tolist(), sizes.tolist(), strict=True)}
        rows = pd.to_numeric(frame[_OPTICS_GROUP].astype(object), errors="coerce")
        return np.array([by_group.get(g, np.nan) for g in rows.tolist()], dtype=np.float64)
    distinct = set(sizes[np.isfinite(sizes)].tolist())
    if len(distinct) == 1:
        return np.full(n, distinct.pop())
    return np.full(n, np.nan)


def _star_particle_frame(
    t, images, path, voxel_size, tomogram_shape, relion5, tomograms=None
) -> pd.DataFrame:
    n = len(t)
    xyz = t[["x", "y", "z"]].to_numpy(dtype=np.float64)
    has_image = np.array([bool(s) for s in images], dtype=bool)
    bad = ~np.isfinite(xyz).all(axis=1) & ~has_image
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"particle {i + 1} has neither finite coordinates nor an image_name")
    write_coords = not (n > 0 and has_image.all() and np.isnan(xyz).all())
    columns: dict[str, Any] = {}
    tomo_names = t["tomo_name"].to_numpy(dtype=object)
    if relion5 and tomograms and len(tomograms) == 1 and not any(tomo_names):
        tomo_names = np.full(n, str(next(iter(tomograms))), dtype=object)  # the one tomogram
    if write_coords:
        if relion5:
            if not tomograms and (tomogram_shape is None or voxel_size is None):
                raise _fail(
                    path,
                    "relion5=True needs tomogram_shape and voxel_size (or tomograms) to write "
                    "centred Å coordinates",
                )
            geometry = _Geometry(tomogram_shape, voxel_size, path, tomograms)
            sizes, voxel = geometry.per_row(tomo_names)
            known = np.isfinite(sizes).all(axis=1) & np.isfinite(voxel)
            missing = ~known & np.isfinite(xyz).all(axis=1)
            if missing.any():
                i = int(np.flatnonzero(missing)[0])
                raise _fail(
                    path,
                    f"relion5=True needs the shape and voxel size of tomogram {tomo_names[i]!r} "
                    f"(particle {i + 1}), which were not given",
                )
            # RELION 5: Å = (voxel - centre) * voxel size (see voxels_to_centred).
            centred = (xyz - geometry.centres(tomo_names, sizes, voxel)) * voxel[:, None]
            for i, label in enumerate(_CENTRED):
                columns[label] = centred[:, i]
        else:
            for i, label in enumerate(_COORD):
                columns[label] = xyz[:, i]
    if (t["class_number"] > 0).any():
        columns[_CLASS] = t["class_number"].to_numpy(dtype=np.int64)
    if t["probability"].notna().any():
        columns[_PROBABILITY] = t["probability"].to_numpy(dtype=np.float64)
    if t["score"].notna().any():
        columns[_SCORE] = t["score"].to_numpy(dtype=np.float64)
    if has_image.any():
        names = [_star_safe(s, _IMAGE, path, allow_empty=True) for s in images]
        if not columns:  # the name starts the row: a leading "data_" would open a new block
            names = [f"./{s}" if s.startswith("data_") else s for s in names]
        columns[_IMAGE] = names
    if any(tomo_names):
        columns[_TOMO] = [_star_safe(str(s), _TOMO, path, allow_empty=True) for s in tomo_names]
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


def _star_safe(value: str, label: str, path: Any, *, allow_empty: bool = False) -> str:
    """`value` if a STAR file can hold it unchanged through starfile, else an InputError."""
    if not value and allow_empty:
        return value
    if not value or _STAR_BAD_CHARS.search(value) or value in _STAR_NA_TOKENS:
        raise _fail(
            path,
            f"{label} {value!r} cannot be stored in a STAR file (empty, quotes, '#', tabs, "
            "line breaks or a missing-value token like 'nan'); rename it",
        )
    return value


def replace_star_columns(
    source: str | os.PathLike,
    out: str | os.PathLike,
    columns: Mapping[str, Sequence],
    *,
    rows: Sequence[int] | None = None,
) -> None:
    """Copy a STAR file, setting some columns of its particle block, atomically.

    Every other block, column and value is kept as written (values are carried as text),
    so angles, optics groups and names survive unchanged; this is how predictions are
    written back into a user's RELION file.

    Args:
        source: STAR file to copy.
        out: destination (may be `source`).
        columns: label -> one value per particle (ints stay ints, floats are written with
            full precision, NaN as ``nan``); with ``rows``, one per kept particle.
        rows: keep only these particles of the particle block, in this order (None: all).

    Raises:
        InputError: `source` unreadable or without a particle block, or a column whose
            length differs from the number of particles.
    """
    source, out = Path(source), Path(out)
    blocks = dict(_read_star_blocks(source))
    name = _particle_block_name(blocks, source)
    frame = _block_frame(blocks[name]).copy()
    if rows is not None:
        frame = frame.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    for label, values in columns.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or len(arr) != len(frame):
            raise _fail(
                source,
                f"{len(arr) if arr.ndim == 1 else arr.shape} values for {label} but the file "
                f"lists {len(frame)} particles",
            )
        frame[label] = [_format_value(v) for v in arr.tolist()]
    blocks[name] = frame
    with atomic_write(out) as tmp:
        starfile.write(blocks, tmp, float_format=None, na_rep="nan")


def _format_value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)
