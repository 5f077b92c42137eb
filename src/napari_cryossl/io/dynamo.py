"""Dynamo tables (``.tbl``) for subtomogram averaging: `write_dynamo_table`, `read_dynamo_table`.

A Dynamo table is a text matrix, one particle per row, whose columns have fixed meanings
(Dynamo wiki, "Table convention"; numbered from 1): 1 tag, 2 aligned, 3 averaged,
4-6 dx, dy, dz (shifts), 7-9 tdrot, tilt, narot (Euler angles), 10 cc, ..., 20 tomo
(tomogram index), 21 reg (region), 22 class, 23 annotation, 24-26 x, y, z (position in the
tomogram, pixels), ..., 36 apix (Å per pixel). Tomogram indices are resolved by a table
map (``.doc``): one ``index path`` line per tomogram.

The files are written and parsed with `dynamotable` (teamtomo), an optional dependency:
``pip install 'napari-cryossl[dynamo]'``.

Coordinates: Dynamo is MATLAB; it counts voxels from 1 ("Volume center" page of the
Dynamo wiki: the corner voxel is ``V[1,1,1]``), so the table's x, y, z are the particle
table's 0-based voxel centres plus 1. They are in voxels of the tomogram the particles were
picked in; ``apix`` records its voxel size (``dynamo_table_rescale`` in Dynamo changes
binning).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.errors import _fail, _positive_float, _read_text
from napari_cryossl.io.tables import _canonical, _class_array, make_particle_table

#: Dynamo's voxel index of the first voxel (MATLAB): table x = 0-based voxel + this.
DYNAMO_ORIGIN = 1.0

_INSTALL = "pip install 'napari-cryossl[dynamo]' (or pip install dynamotable)"


def _dynamotable(where):
    try:
        import dynamotable
    except ImportError as err:
        raise _fail(
            where, f"Dynamo tables need the optional package dynamotable: {_INSTALL}"
        ) from err
    return dynamotable


def write_dynamo_table(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    voxel_size: float | None = None,
) -> Path | None:
    """Write a particle table as a Dynamo table (``.tbl``) plus its table map, atomically.

    Per particle: ``tag`` 1..N, ``aligned`` 1, shifts and angles 0 (unknown), ``cc`` the
    predicted probability (0 where none; ``dtselect`` can threshold on it), ``tomo`` the
    tomogram index (1, 2, ... in order of first appearance of ``tomo_name``), ``class`` the
    class number (0 = unlabelled), ``x, y, z`` the centre in 1-based voxels (0-based + 1),
    ``apix`` the voxel size when given. When particles name tomograms, the table map
    ``<path without .tbl>.doc`` lists ``index tomo_name`` per tomogram (Dynamo's
    ``indices_column_20.doc``).

    Args:
        table: particle table with finite x, y, z (tomogram voxels).
        path: the ``.tbl`` file to write.
        voxel_size: Å per voxel of the tomogram(s), written as ``apix`` (column 36).

    Returns:
        The table map written, or None (no tomogram names).

    Raises:
        InputError: not a ``.tbl`` path, particles without coordinates, tomogram names
            with whitespace (a table map cannot hold them), dynamotable not installed.
    """
    path = Path(path)
    if path.suffix.lower() != ".tbl":
        raise _fail(path, "a Dynamo table must end in .tbl")
    dynamotable = _dynamotable(path)
    t = _canonical(table, path)
    xyz = t[["x", "y", "z"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(
            path,
            f"particle {i + 1} has no coordinates in a tomogram: a Dynamo table holds "
            "particle positions, not subtomogram files",
        )
    if voxel_size is not None:
        voxel_size = _positive_float(voxel_size, "voxel_size", path)
    names = t["tomo_name"].astype(str).tolist()
    order = list(dict.fromkeys(names))
    index = {name: i + 1 for i, name in enumerate(order)}
    n = len(t)
    prob = t["probability"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(
        {
            "tag": np.arange(1, n + 1, dtype=np.int64),
            "aligned_value": np.ones(n, dtype=np.int64),
            "cc": np.where(np.isfinite(prob), prob, 0.0),
            "tomo": np.array([index[name] for name in names], dtype=np.int64),
            "class": t["class_number"].to_numpy(dtype=np.int64),
            "x": xyz[:, 0] + DYNAMO_ORIGIN,
            "y": xyz[:, 1] + DYNAMO_ORIGIN,
            "z": xyz[:, 2] + DYNAMO_ORIGIN,
        }
    )
    if voxel_size is not None:
        frame["apix"] = voxel_size
    doc = None
    if any(order):
        for name in order:
            if not name or any(c.isspace() for c in name):
                raise _fail(
                    path,
                    f"tomogram name {name!r} cannot go into a Dynamo table map (empty or "
                    "containing whitespace); give every particle a tomo_name without spaces",
                )
        doc = path.with_suffix(".doc")
    with atomic_write(path) as tmp:
        dynamotable.write(frame, str(tmp))
    if doc is not None:
        with atomic_write(doc) as tmp:
            tmp.write_text("".join(f"{index[name]} {name}\n" for name in order), encoding="utf-8")
    return doc


def read_dynamo_table(
    path: str | os.PathLike,
    *,
    table_map: str | os.PathLike | None = None,
    source: str = "imported",
) -> pd.DataFrame:
    """Read a Dynamo table (``.tbl``) into a particle table.

    Centres are ``x + dx - 1`` (and y, z): the shifted position, 0-based. ``class`` becomes
    ``class_number`` (negative classes are refused); ``tomo_name`` is the tomogram's
    entry in the table map (default ``<path without .tbl>.doc`` when it exists), else the
    tomogram index as text. Angles and ``cc`` are not read.

    Raises:
        InputError: unreadable or malformed table (fewer than 26 columns, non-numbers),
            unreadable table map, dynamotable not installed.
    """
    path = Path(path)
    dynamotable = _dynamotable(path)
    text = _read_text(path, "Dynamo table")
    if not text.strip():
        return make_particle_table(np.zeros((0, 3)), source=source)
    try:
        frame = dynamotable.read(str(path))
    except Exception as err:  # noqa: BLE001 - pandas raises many types on malformed text
        raise _fail(path, f"not a readable Dynamo table ({type(err).__name__}: {err})") from err
    if frame.shape[1] < 26:
        raise _fail(
            path,
            f"a Dynamo table has at least 26 columns (x, y, z are 24-26), found {frame.shape[1]}",
        )
    cols = ["dx", "dy", "dz", "x", "y", "z", "tomo", "class"]
    values = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"row {i + 1}: columns 4-6, 20, 22 and 24-26 must be numbers")
    xyz = values[:, 3:6] + values[:, 0:3] - DYNAMO_ORIGIN
    tomo = values[:, 6].astype(np.int64)
    names = {}
    doc = Path(table_map) if table_map is not None else path.with_suffix(".doc")
    if table_map is not None or doc.is_file():
        for k, line in enumerate(_read_text(doc, "Dynamo table map").splitlines()):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
                raise _fail(doc, f"line {k + 1}: expected 'index tomogram', got {line!r}")
            names[int(parts[0])] = parts[1].strip()
    return make_particle_table(
        xyz[:, ::-1],
        class_number=_class_array(values[:, 7], path),
        tomo_name=[names.get(int(i), str(int(i))) for i in tomo],
        source=source,
    )
