"""Particle files by suffix: `read_particles` and `write_particles` (STAR or CSV).

The entry points for particle lists: they pick the format by suffix, read STAR through
`napari_cryossl.io.star` and CSV here (a header row naming ``x,y,z`` in pixels), check
the coordinates against the tomogram geometry and write atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.coordinates import _check_inside, _Geometry
from napari_cryossl.io.errors import _fail, _read_text
from napari_cryossl.io.relion5 import read_tomograms_star
from napari_cryossl.io.star import _read_star_particles, _star_particle_frame
from napari_cryossl.io.tables import (
    PARTICLE_SOURCES,
    _canonical,
    _class_array,
    _relative_images,
    _resolve_images,
    make_particle_table,
)

#: Suffixes accepted for particle files.
PARTICLE_SUFFIXES = (".star", ".csv")


# ------------------------------------------------------------------------------ reading files


def read_particles(
    path: str | os.PathLike,
    *,
    tomogram_shape=None,
    voxel_size=None,
    source: str = "imported",
    allow_missing_geometry: bool = False,
    tomograms=None,
) -> pd.DataFrame:
    """Read a particle file (RELION 3/4/5 STAR, subtomogram STAR, CSV) into a particle table.

    STAR flavours, recognised by their columns (docs/coordinates.md shows each):

    - RELION 3/4: ``rlnCoordinateX/Y/Z`` in pixels, ``rlnTomoName`` or
      ``rlnMicrographName`` naming the tomogram.
    - RELION 4 coordinates are pixels of the unbinned tilt series: when the file records
      their pixel size (``rlnTomoTiltSeriesPixelSize`` in the particle or optics block) or
      `tomograms` does, and `voxel_size` (or `tomograms`) gives the tomogram's, they are
      rescaled to the tomogram's voxels (``x * pixel size / voxel size``), so files refer
      to binned tomograms correctly. Without both they are kept as written.
    - RELION 5: ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre), converted
      with `tomogram_shape` and `voxel_size` or with `tomograms` (RELION's own centre,
      ``rlnTomoSizeX/Y/Z / 2`` unbinned pixels; see `centred_to_voxels`). When a file has
      both kinds, the centred ones are used if the geometry is known.
    - Subtomogram lists: ``rlnImageName`` per particle, one MRC file each; relative names are
      resolved against the STAR file's folder (or, as in a RELION project, the nearest
      parent folder where the first one exists) and stored as absolute paths.
    - ``rlnClassNumber`` (1-based; absent = 0, unlabelled),
      ``rlnMaxValueProbDistribution`` -> probability, ``rlnAutopickFigureOfMerit`` -> score.
    - RELION 3.1+ files with an optics block: the ``particles`` block is read. Other
      columns are ignored. ``rlnOriginX/Y/ZAngst`` shifts are *not* applied (a warning says
      so when they are non-zero).

    CSV: a header row naming ``x,y,z`` (pixels) and optionally ``class`` or
    ``class_number``, ``probability``, ``score``, ``tomo_name``, ``image_name``
    (case-insensitive). A file with only ``image_name`` is a subtomogram list.

    A file with a header but no rows gives an empty table.

    Args:
        path: ``.star`` or ``.csv`` file.
        tomogram_shape: (nz, ny, nx) of the tomogram the coordinates refer to, or a mapping
            tomogram name -> (nz, ny, nx) for files that span several tomograms (names as
            in ``rlnTomoName`` / ``rlnMicrographName``). Needed for RELION-5 files; every
            particle whose tomogram shape is known must lie inside it.
        voxel_size: Å per voxel of that tomogram, or a mapping tomogram name -> Å.
        source: the `source` recorded for every particle.
        allow_missing_geometry: give NaN coordinates (instead of raising) to RELION-5
            particles whose tomogram geometry is not given; for callers that first read a
            file to learn which tomograms it names.
        tomograms: a RELION tomogram set: the path of a ``tomograms.star`` or
            `read_tomograms_star`'s mapping (name -> `RelionTomogram`). It gives each
            named tomogram's shape, voxel size, centre and tilt-series pixel size where
            `tomogram_shape` / `voxel_size` do not (those describe the tomogram as opened
            and take precedence).

    Returns:
        The particle table (`PARTICLE_COLUMNS`); ``attrs["format"]`` names the flavour read
        ("relion3/4", "relion5", "subtomograms", "csv"), ``attrs["voxel_size"]`` the
        voxel size used or found in the file (absent when unknown) and
        ``attrs["rescaled"]`` is True when RELION-4 pixels were rescaled to voxels.

    Raises:
        InputError: missing/unreadable/empty file, no particle block or no known columns,
            partial or non-numeric coordinates, bad class numbers, RELION-5 coordinates
            without geometry, coordinates outside the tomogram, image stacks (``n@file``),
            a `tomograms` file that is not a readable tomogram set.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PARTICLE_SUFFIXES:
        raise _fail(path, f"unsupported particle file type {suffix!r}; expected .star or .csv")
    if tomograms is not None and not isinstance(tomograms, Mapping):
        tomograms = read_tomograms_star(tomograms)
    geometry = _Geometry(tomogram_shape, voxel_size, path, tomograms)
    if source not in PARTICLE_SOURCES:
        raise _fail(path, f"unknown source {source!r}; expected one of {PARTICLE_SOURCES}")
    if suffix == ".star":
        table, attrs = _read_star_particles(path, geometry, source, allow_missing_geometry)
    else:
        table, attrs = _read_csv_particles(path, source)
    _check_inside(table, geometry, path)
    if geometry.single_voxel_size is not None:
        attrs["voxel_size"] = geometry.single_voxel_size
    table.attrs.update(attrs)
    return table


def _read_csv_particles(path: Path, source: str) -> tuple[pd.DataFrame, dict]:
    text = _read_text(path, "CSV")
    if not text.strip():
        raise _fail(path, "empty CSV file (a header row x,y,z[,class] is required)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:  # noqa: BLE001 - pandas raises many types on malformed text
        raise _fail(path, f"not a readable CSV file ({type(err).__name__}: {err})") from err
    columns = {}
    for col in frame.columns:
        key = str(col).strip().lower()
        if key in columns:
            raise _fail(path, f"column {key!r} appears more than once")
        columns[key] = col
    has_xyz = [c in columns for c in ("x", "y", "z")]
    if not any(has_xyz) and "image_name" not in columns:
        if all(_is_number(str(c)) for c in frame.columns):
            raise _fail(
                path, "no header row: the first line must name the columns, e.g. x,y,z,class"
            )
        found = ", ".join(map(str, frame.columns[:10]))
        raise _fail(path, f"no x, y, z (or image_name) columns; found: {found}")
    if any(has_xyz) and not all(has_xyz):
        missing = [c for c, p in zip("xyz", has_xyz, strict=True) if not p]
        raise _fail(path, f"missing coordinate column(s) {', '.join(missing)}")
    if "class" in columns and "class_number" in columns:
        raise _fail(path, "has both 'class' and 'class_number' columns; keep one")
    n = len(frame)

    def numbers(key: str, *, finite: bool) -> np.ndarray:
        if key not in columns:
            return np.full(n, np.nan)
        raw = frame[columns[key]].astype(str).str.strip()
        is_na = raw.isin(["", "nan", "NaN", "NA", "<NA>"])
        values = pd.to_numeric(raw.where(~is_na, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.isnan(values) & ~is_na.to_numpy()
        if finite:
            bad |= np.isinf(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(path, f"data row {i + 1}: {key} = {raw.iloc[i]!r} is not a finite number")
        return values

    def texts(key: str) -> np.ndarray:
        if key not in columns:
            return np.full(n, "", dtype=object)
        return frame[columns[key]].astype(str).to_numpy(dtype=object)

    xyz = np.column_stack([numbers(c, finite=True) for c in "xyz"]).reshape(n, 3)
    images = texts("image_name")
    missing = ~np.isfinite(xyz).all(axis=1) & (images == "")
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise _fail(path, f"data row {i + 1} has no coordinates and no image_name")
    class_key = "class_number" if "class_number" in columns else "class"
    raw_classes = numbers(class_key, finite=True)
    if np.isnan(raw_classes).any() and class_key in columns:
        i = int(np.flatnonzero(np.isnan(raw_classes))[0])
        raise _fail(path, f"data row {i + 1}: {class_key} is empty (use 0 for unlabelled)")
    classes = np.nan_to_num(raw_classes, nan=0.0)
    table = make_particle_table(
        xyz[:, ::-1],
        class_number=_class_array(classes, path),
        image_name=_resolve_images(images, path, path),
        source=source,
        score=numbers("score", finite=False),
        tomo_name=texts("tomo_name"),
        probability=numbers("probability", finite=False),
    )
    return table, {"format": "csv"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------ writing files


def write_particles(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    voxel_size: float | None = None,
    tomogram_shape=None,
    relion5: bool = False,
    tomograms=None,
) -> None:
    """Write a particle table as a RELION STAR or a CSV file (by suffix), atomically.

    STAR (RELION-4 style unless `relion5`), one ``data_particles`` block with:
    ``rlnCoordinateX/Y/Z`` (pixels; omitted only for a pure subtomogram list),
    ``rlnClassNumber`` when any particle is labelled, ``rlnMaxValueProbDistribution`` when
    any probability is set, ``rlnAutopickFigureOfMerit`` when any score is set,
    ``rlnImageName`` when any particle has a file (relative to the STAR folder when inside
    it), ``rlnTomoName`` when any particle names a tomogram. With ``relion5=True`` the
    coordinates are written as ``rlnCenteredCoordinateX/Y/ZAngst`` instead (RELION 5: Å
    from each particle's tomogram centre), from `tomogram_shape` and `voxel_size` (one
    tomogram, or mappings name -> value) or from `tomograms` (RELION's centre,
    ``rlnTomoSizeX/Y/Z / 2``); with a single tomogram in `tomograms`, particles without a
    name get its name (RELION 5 needs ``rlnTomoName``). `write_tomograms_star` writes the
    matching tomogram set.

    CSV: ``x,y,z,class`` plus ``probability``, ``score``, ``tomo_name``, ``image_name``
    when set. Numbers are written with full precision so reading gives back the same table.

    Args:
        table: particle table (`PARTICLE_COLUMNS`; missing optional columns take defaults).
        path: destination ``.star`` or ``.csv`` (its folder must exist).
        voxel_size: Å per voxel (needed for ``relion5`` without `tomograms`), or a mapping
            tomogram name -> Å.
        tomogram_shape: (nz, ny, nx) (needed for ``relion5`` without `tomograms`), or a
            mapping tomogram name -> (nz, ny, nx).
        relion5: write RELION-5 centred Å coordinates.
        tomograms: for ``relion5``: name -> `RelionTomogram` (or a ``tomograms.star`` path).

    Raises:
        InputError: unsupported suffix, invalid table, RELION-5 without geometry, names that
            a STAR file cannot hold (quotes, '#', tabs or line breaks).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PARTICLE_SUFFIXES:
        raise _fail(path, f"unsupported particle file type {suffix!r}; expected .star or .csv")
    t = _canonical(table, path)
    images = _relative_images(t["image_name"].tolist(), path)
    if suffix == ".csv":
        if relion5:
            raise _fail(path, "relion5=True applies to STAR files only (CSV holds pixels)")
        frame = pd.DataFrame({"x": t["x"], "y": t["y"], "z": t["z"], "class": t["class_number"]})
        if t["probability"].notna().any():
            frame["probability"] = t["probability"]
        if t["score"].notna().any():
            frame["score"] = t["score"]
        if (t["tomo_name"] != "").any():
            frame["tomo_name"] = t["tomo_name"]
        if any(images):
            frame["image_name"] = images
        with atomic_write(path) as tmp:
            frame.to_csv(tmp, index=False, na_rep="nan")
        return
    if tomograms is not None and not isinstance(tomograms, Mapping):
        tomograms = read_tomograms_star(tomograms)
    frame = _star_particle_frame(
        t, images, path, voxel_size, tomogram_shape, relion5, tomograms=tomograms
    )
    with atomic_write(path) as tmp:
        starfile.write({"particles": frame}, tmp, float_format=None, na_rep="nan")
