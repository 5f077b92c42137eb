"""Particle files and their tomograms, read and checked for `SubtomogramSet`.

A set's particles come with a table (STAR or CSV) whose coordinates only mean something
in their tomogram's geometry. This module finds that geometry: it opens the tomograms
(found by rlnTomoName next to the STAR file, or listed by a RELION ``tomograms.star``),
reconciles a RELION tomogram record with the reconstruction actually on disk (voxel
size, binning, shape), reads the table in that geometry, reads a standalone
subtomogram's header, and checks class numbers, voxel sizes and box sizes. It keeps
`dataset.py` to the set itself; only `dataset.py` uses it.
"""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io import (
    TOMOGRAM_SUFFIXES,
    InputError,
    InputWarning,
    RelionTomogram,
    Tomogram,
    open_tomogram,
    read_particles,
)
from napari_cryossl.io.mrc import _tomogram_exists

#: A tomogram named in a STAR file: the name as it is, then with each tomogram suffix.
_TOMOGRAM_SUFFIXES = ("", *TOMOGRAM_SUFFIXES)


def _as_tomogram(tomogram) -> Tomogram:
    if hasattr(tomogram, "data") and hasattr(tomogram, "path"):
        return tomogram
    return open_tomogram(tomogram)


def _picklable_tomogram(tomo: Tomogram | Path) -> Tomogram | Path:
    """A memory-mapped or OME-Zarr tomogram travels as its path (reopened on use); in-RAM
    data as is.

    Pickling a numpy memmap would copy every voxel into each DataLoader worker.
    """
    if isinstance(tomo, Path) or not _tomogram_exists(tomo.path):
        return tomo
    if tomo.levels:  # OME-Zarr: lazy arrays on disk
        return Path(tomo.path)
    base = tomo.data
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return Path(tomo.path)
        base = getattr(base, "base", None)
    return tomo


def _read_table(
    path: Path,
    tomo: Tomogram | None,
    *,
    shapes=None,
    voxel_sizes=None,
    records=None,
) -> pd.DataFrame:
    """Read the particle file in the geometry of its tomogram(s).

    With one tomogram: its shape and voxel size. With the tomograms by name (`shapes`,
    `voxel_sizes`, RELION's `records`): each particle's. With nothing yet: a first read
    that only tells which tomograms the file names (RELION-5 coordinates NaN, RELION-4
    pixels as written); `SubtomogramSet._from_coordinates` then reads it again.
    """
    if tomo is not None:
        return read_particles(path, tomogram_shape=tomo.shape, voxel_size=tomo.voxel_size)
    if shapes is None:
        return read_particles(path, allow_missing_geometry=True)
    return read_particles(path, tomogram_shape=shapes, voxel_size=voxel_sizes, tomograms=records)


def _records_of(table: pd.DataFrame, tomo: Tomogram) -> dict[str, RelionTomogram]:
    """The RELION record of the one tomogram of a set, under the name its particles use."""
    names = sorted(set(table["tomo_name"].fillna("").astype(str)) - {""}) if len(table) else []
    name = names[0] if len(names) == 1 else Path(tomo.path).stem
    return {name: RelionTomogram.from_tomogram(tomo, name=name)}


def _tomograms_from_records(names, records: dict, path: Path):
    """Each named tomogram's file (its rlnTomoReconstructedTomogram, else found by name next
    to the STAR file) and its record."""
    unknown = [n for n in names if n not in records]
    if unknown:
        listed = ", ".join(list(records)[:8]) + (", ..." if len(records) > 8 else "")
        raise InputError(
            f"{path}: tomogram {unknown[0]!r} is not in the tomograms.star "
            f"(rlnTomoName there: {listed or 'none'})"
        )
    found = {}
    for name in names:
        record = records[name]
        if record.path is not None and _tomogram_exists(record.path):
            found[name] = record.path
            continue
        try:
            found[name] = _find_tomogram(name, path)
        except InputError as err:
            if record.path is not None:
                named = f"{record.path} (rlnTomoReconstructedTomogram) does not exist and "
            else:
                named = "the tomograms.star names no reconstruction and "
            raise InputError(f"{path}: tomogram {name!r}: {named}{err}") from err
        if record.path is not None:  # the recorded file is missing: say which one is used
            warnings.warn(
                f"{path}: tomogram {name!r}: {record.path} (rlnTomoReconstructedTomogram) "
                f"does not exist; using {found[name]}, found by name next to the STAR file",
                InputWarning,
                stacklevel=3,
            )
    return found, {name: records[name] for name in names}


def _reconcile(tomo: Tomogram, record: RelionTomogram, path: Path):
    """The tomogram with RELION's voxel size, and its record, checked against each other.

    RELION's record (tilt-series pixel size x binning, size / binning) is what its
    coordinates refer to. A reconstruction of another binning than the record says is
    accepted when its header's voxel size tells the binning and the shape then agrees; a
    shape that still disagrees by more than a voxel is refused (the coordinates would land
    elsewhere).
    """

    def agrees(rec: RelionTomogram) -> bool:
        return all(abs(a - b) <= 1 for a, b in zip(rec.shape, tomo.shape, strict=True))

    if not agrees(record):
        binning = tomo.voxel_size / record.tilt_series_pixel_size
        candidate = RelionTomogram(
            name=record.name,
            tilt_series_pixel_size=record.tilt_series_pixel_size,
            size_xyz=record.size_xyz,
            binning=binning,
            path=Path(tomo.path),
        )
        if not agrees(candidate):
            raise InputError(
                f"{path}: tomogram {record.name!r} ({tomo.path}) is "
                f"{_fmt_shape(tomo.shape[::-1])} voxels (X x Y x Z) of {tomo.voxel_size:g} Å, "
                f"but the tomograms.star records {_fmt_shape(record.size_xyz)} pixels of "
                f"{record.tilt_series_pixel_size:g} Å at binning {record.binning:g} "
                f"({_fmt_shape(record.shape[::-1])} voxels): is it another reconstruction?"
            )
        record = candidate
    elif abs(tomo.voxel_size / record.voxel_size - 1.0) > 1e-3:
        warnings.warn(
            f"{tomo.path}: the MRC header says {tomo.voxel_size:g} Å per voxel, the "
            f"tomograms.star {record.voxel_size:g} Å (tilt-series pixel "
            f"{record.tilt_series_pixel_size:g} Å x binning {record.binning:g}); using the "
            "tomograms.star's",
            InputWarning,
            stacklevel=4,
        )
    if tomo.voxel_size != record.voxel_size:
        tomo = Tomogram(path=tomo.path, data=tomo.data, voxel_size=record.voxel_size)
    return tomo, record


def _find_tomogram(name: str, star_path: Path) -> Path:
    base = Path(name)
    if not base.is_absolute():
        base = star_path.parent / base
    tried = []
    for suffix in _TOMOGRAM_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        tried.append(str(candidate))
        if _tomogram_exists(candidate):
            return candidate
    raise InputError(
        f"{star_path}: tomogram {name!r} not found (tried {', '.join(tried)}); pass the "
        "tomogram explicitly (--tomogram), or the RELION tomograms.star that lists it "
        "(--tomogram tomograms.star)"
    )


def _subtomogram_geometry(path: Path, star_path: Path, row: int):
    """ZYX shape and voxel size (Å) of a subtomogram file, reading only its header.

    `open_tomogram` validates the header and maps the data without reading it, so this is
    cheap even for thousands of files, and applies the same axis rules as reading does.
    """
    if not path.is_file():
        raise InputError(f"{star_path}: subtomogram {path} (row {row + 1}) does not exist")
    tomo = open_tomogram(path)
    return tomo.shape, tomo.voxel_size


def _check_class_numbers(class_numbers, n: int, name: str) -> np.ndarray:
    if class_numbers is None:
        return np.zeros(n, dtype=np.int64)
    labels = np.asarray(class_numbers)
    if labels.shape != (n,):
        raise InputError(f"{name}: {labels.shape} class numbers for {n} subtomograms")
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise InputError(f"{name}: class numbers must be whole numbers")
    elif labels.dtype.kind not in "iu":
        raise InputError(f"{name}: class numbers must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if (labels < 0).any():
        raise InputError(f"{name}: class numbers must be >= 0 (0 = unlabelled)")
    return labels


def _check_voxel_size(voxel_size, name: str) -> float:
    value = float(voxel_size)
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"{name}: voxel size must be positive, got {voxel_size}")
    return value


def _check_box(box_size, binning, name: str) -> tuple[int, int]:
    if int(box_size) != box_size or box_size < 1:
        raise InputError(f"{name}: box_size must be a positive integer, got {box_size}")
    if int(binning) != binning or binning < 1:
        raise InputError(f"{name}: binning must be a positive integer, got {binning}")
    return int(box_size), int(binning)


def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
