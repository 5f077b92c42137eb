"""RELION 5 tomogram sets: `read_tomograms_star` and `write_tomograms_star`.

A RELION 5 project describes its tomograms in ``tomograms.star`` (block ``global``, one
row per tomogram; the RELION documentation's "tomogram set"): ``rlnTomoName``,
``rlnTomoTiltSeriesPixelSize`` (Å per unbinned tilt-series pixel), ``rlnTomoSizeX/Y/Z``
(the tomogram's extent in unbinned pixels), ``rlnTomoTomogramBinning`` and
``rlnTomoReconstructedTomogram`` (the binned reconstruction) when tomograms were
reconstructed. Particles (``rlnCenteredCoordinateX/Y/ZAngst``, Å from the tomogram centre)
refer to it by ``rlnTomoName``. Each row becomes a `RelionTomogram`; `read_particles` and
`write_particles` take them (``tomograms=``) to map particles to each tomogram's voxels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.coordinates import RelionTomogram
from napari_cryossl.io.errors import InputWarning, _fail
from napari_cryossl.io.mrc import _tomogram_exists
from napari_cryossl.io.star import (
    _STAR_BAD_CHARS,
    _STAR_NA_TOKENS,
    _block_frame,
    _read_star_blocks,
    _star_float,
    _star_safe,
    _star_text,
)

_NAME = "rlnTomoName"
_PIXEL = "rlnTomoTiltSeriesPixelSize"
_SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
_BINNING = "rlnTomoTomogramBinning"
_RECONSTRUCTION = "rlnTomoReconstructedTomogram"
_PARTICLE_COLUMNS = ("rlnCoordinateX", "rlnCenteredCoordinateXAngst", "rlnImageName")


def read_tomograms_star(path: str | os.PathLike) -> dict[str, RelionTomogram]:
    """Read a RELION tomogram set (``tomograms.star``) into `RelionTomogram` records.

    The block ``global`` is read (else the first block with ``rlnTomoName``); the per-tilt
    blocks are ignored. Per tomogram: ``rlnTomoName``, ``rlnTomoTiltSeriesPixelSize``,
    ``rlnTomoSizeX/Y/Z`` (unbinned pixels) and, when present,
    ``rlnTomoTomogramBinning`` and ``rlnTomoReconstructedTomogram``. Without a binning
    column, the binning is the reconstructed tomogram's voxel size (its MRC header) over
    the tilt-series pixel size, or 1 when no reconstruction is named. Reconstruction paths
    are found like RELION's (relative to the project folder): from the STAR file's folder,
    else from the nearest parent folder where the first one exists.

    Args:
        path: the ``tomograms.star`` file.

    Returns:
        ``{rlnTomoName: RelionTomogram}`` in file order.

    Raises:
        InputError: unreadable file, no tomogram block, missing columns, duplicate names,
            sizes or pixel sizes that are not positive numbers, a reconstruction without a
            voxel size when no binning is given.
    """
    path = Path(path)
    blocks = _read_star_blocks(path)
    name = "global" if "global" in blocks and _NAME in _frame_columns(blocks["global"]) else None
    if name is None:  # another block name: the first that lists tomograms and their sizes
        name = next(
            (k for k, b in blocks.items() if {_NAME, _SIZE[0]} <= set(_frame_columns(b))), None
        )
    if name is None:
        found = ", ".join(f"data_{k}" for k in blocks)
        particles = any(c in _frame_columns(b) for b in blocks.values() for c in _PARTICLE_COLUMNS)
        raise _fail(
            path,
            "not a RELION tomogram set: no block (data_global) lists rlnTomoName with "
            f"rlnTomoSizeX/Y/Z (found {found})"
            + ("; this looks like a particle file" if particles else ""),
        )
    frame = _block_frame(blocks[name])
    where = f"{path} (data_{name})"
    missing = [c for c in (_NAME, _PIXEL, *_SIZE) if c not in frame.columns]
    if missing:
        raise _fail(
            where,
            f"missing column(s) {', '.join(missing)}: a tomogram set needs rlnTomoName, "
            "rlnTomoTiltSeriesPixelSize and rlnTomoSizeX/Y/Z",
        )
    n = len(frame)
    names = _star_text(frame, _NAME, n)
    if (names == "").any():
        raise _fail(where, f"tomogram {int(np.flatnonzero(names == '')[0]) + 1} has no rlnTomoName")
    seen: set[str] = set()
    for value in names:
        if value in seen:
            raise _fail(where, f"rlnTomoName {value!r} appears more than once")
        seen.add(value)
    pixel = _positive_column(frame, _PIXEL, names, where)
    sizes = np.column_stack([_positive_column(frame, c, names, where) for c in _SIZE])
    binning = (
        _positive_column(frame, _BINNING, names, where)
        if _BINNING in frame.columns
        else np.full(n, np.nan)
    )
    recs = _star_text(frame, _RECONSTRUCTION, n)
    paths = _resolve_reconstructions(recs, path)
    out: dict[str, RelionTomogram] = {}
    for i, tomo_name in enumerate(names):
        b = float(binning[i])
        if not np.isfinite(b):
            b = _binning_from_reconstruction(paths[i], float(pixel[i]), tomo_name, where)
        out[str(tomo_name)] = RelionTomogram(
            name=str(tomo_name),
            tilt_series_pixel_size=float(pixel[i]),
            size_xyz=(float(sizes[i, 0]), float(sizes[i, 1]), float(sizes[i, 2])),
            binning=b,
            path=paths[i],
        )
    return out


def write_tomograms_star(
    tomograms: Mapping[str, RelionTomogram] | Iterable[RelionTomogram],
    path: str | os.PathLike,
) -> None:
    """Write a RELION tomogram set (``tomograms.star``, block ``global``), atomically.

    One row per tomogram with ``rlnTomoName``, ``rlnTomoTiltSeriesPixelSize``,
    ``rlnTomoTomogramBinning``, ``rlnTomoSizeX/Y/Z`` and, when known,
    ``rlnTomoReconstructedTomogram`` (relative to the file's folder when inside it). This
    is the geometry that centred Å coordinates refer to, enough to read them back here or
    to check them against a RELION project; it has no tilt series, CTF or dose, so RELION
    itself should use the project's own tomograms.star (its rlnTomoName values match).

    Raises:
        InputError: no tomograms, duplicate names, names a STAR file cannot hold.
    """
    path = Path(path)
    items = list(tomograms.values()) if isinstance(tomograms, Mapping) else list(tomograms)
    if not items:
        raise _fail(path, "no tomograms to write")
    names = [str(t.name) for t in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _fail(path, f"rlnTomoName {dup!r} appears more than once")
    folder = os.path.abspath(path.parent)
    frame = pd.DataFrame(
        {
            _NAME: [_star_safe(n, _NAME, path) for n in names],
            _PIXEL: [float(t.tilt_series_pixel_size) for t in items],
            _BINNING: [float(t.binning) for t in items],
            _SIZE[0]: [_whole(t.size_xyz[0]) for t in items],
            _SIZE[1]: [_whole(t.size_xyz[1]) for t in items],
            _SIZE[2]: [_whole(t.size_xyz[2]) for t in items],
        }
    )
    if any(t.path is not None for t in items):
        recs = []
        for t in items:
            text = "" if t.path is None else _relative_to(str(t.path), folder)
            if text and (_STAR_BAD_CHARS.search(text) or text in _STAR_NA_TOKENS):
                raise _fail(path, f"{_RECONSTRUCTION} {text!r} cannot be stored in a STAR file")
            recs.append(text or "None")  # RELION's own text for an unset file name
        frame[_RECONSTRUCTION] = recs
    with atomic_write(path) as tmp:
        starfile.write({"global": frame}, tmp, float_format=None, na_rep="nan")


# ----------------------------------------------------------------------------------------------


def _frame_columns(block) -> list:
    frame = _block_frame(block)
    return [] if frame is None else list(frame.columns)


def _positive_column(frame, label: str, names, where) -> np.ndarray:
    values = _star_float(frame, label, where)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(
            where,
            f"tomogram {names[i]!r}: {label} = {frame[label].iloc[i]!r} is not a positive number",
        )
    return values


def _whole(value: float):
    """Sizes are whole pixels in RELION; keep a fractional one (from a fractional binning)."""
    value = float(value)
    return int(round(value)) if abs(value - round(value)) < 1e-6 else value


def _relative_to(name: str, folder: str) -> str:
    rel = os.path.relpath(name, folder)
    return name if rel.startswith(os.pardir) else rel


def _resolve_reconstructions(names: np.ndarray, path: Path) -> list[Path | None]:
    """Absolute paths of rlnTomoReconstructedTomogram; RELION writes them relative to the
    project folder, a parent of the STAR file's folder (the nearest one where any named
    file exists, so one moved or deleted reconstruction does not lose the others; the STAR
    file's folder when none does)."""
    folder = Path(os.path.abspath(path.parent))
    usable = [n for n in names if n and n != "None"]
    base = folder
    relative = [n for n in usable if not os.path.isabs(n)]
    if relative and not any((folder / n).exists() for n in relative):
        for parent in folder.parents:
            if any((parent / n).exists() for n in relative):
                base = parent
                break
    return [
        Path(os.path.normpath(os.path.join(base, n))) if n and n != "None" else None for n in names
    ]


def _binning_from_reconstruction(recon: Path | None, pixel: float, name: str, where) -> float:
    """No rlnTomoTomogramBinning: the reconstruction's voxel size over the tilt-series
    pixel size (its MRC header), or 1 (unbinned) when no reconstruction is named."""
    if recon is None:
        return 1.0
    if not _tomogram_exists(recon):
        raise _fail(
            where,
            f"tomogram {name!r}: no rlnTomoTomogramBinning and the reconstruction {recon} "
            "does not exist to read its voxel size from; add rlnTomoTomogramBinning",
        )
    from napari_cryossl.io.mrc import open_tomogram

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        voxel = open_tomogram(recon).voxel_size
    for w in caught:  # anything else it warned about still reaches the caller
        if "has no voxel size" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=3)
    if any("has no voxel size" in str(w.message) for w in caught):
        raise _fail(
            where,
            f"tomogram {name!r}: no rlnTomoTomogramBinning and the reconstruction {recon} has "
            "no voxel size in its header; add rlnTomoTomogramBinning",
        )
    return voxel / pixel
