"""What the operations write: particle files by suffix (STAR, RELION 5 with its tomogram
set, CSV, Dynamo .tbl), predictions with the input's rows, selected rows with extra
columns, and predictions written back into a copick project as picks. The CLI and the
dock write through these, so a file means the same whichever wrote it.
"""

from __future__ import annotations

from pathlib import Path


def tomograms_star_beside(out: Path) -> Path:
    """Where a RELION-5 particle file's tomogram set goes: OUT_tomograms.star (never a
    project's own tomograms.star)."""
    return Path(out).with_name(Path(out).stem + "_tomograms.star")


def write_particle_file(table, out: Path, *, voxel_size, records, relion5: bool) -> str:
    """A particle table as OUT by suffix: STAR (RELION 4 pixels, or RELION 5 with its
    tomogram set beside), CSV, or a Dynamo .tbl; returns a note on extra files written."""
    from napari_cryossl.io import (
        InputError,
        write_dynamo_table,
        write_particles,
        write_tomograms_star,
    )

    out = Path(out)
    suffix = out.suffix.lower()
    if relion5 and suffix != ".star":
        raise InputError(f"{out}: --relion5 writes RELION STAR files; use a .star --out")
    if suffix == ".tbl":
        doc = write_dynamo_table(table, out, voxel_size=voxel_size)
        return f" (table map {doc})" if doc is not None else ""
    if not relion5:
        write_particles(table, out)
        return ""
    if not records:
        raise InputError(
            f"{out}: --relion5 needs particles with coordinates in tomograms (these are "
            "subtomogram files)"
        )
    names = set(table["tomo_name"].astype(str)) - {""} if len(table) else set()
    used = {k: v for k, v in records.items() if k in names} or records
    write_particles(table, out, relion5=True, tomograms=used)
    tomograms_out = tomograms_star_beside(out)
    write_tomograms_star(used, tomograms_out)
    return f" (tomogram set {tomograms_out})"


def tomogram_reference(tomogram: Path, star: Path) -> str:
    """rlnTomoName for a tomogram: its name when the STAR sits beside it, else its path
    relative to the STAR's folder (absolute when there is no relative path)."""
    import os

    tomogram, folder = tomogram.resolve(), star.resolve().parent
    if tomogram.parent == folder:
        return tomogram.name
    try:
        return os.path.relpath(tomogram, folder)
    except ValueError:  # another drive (Windows)
        return str(tomogram)


def is_copick_out(out: Path) -> bool:
    return Path(out).suffix.lower() == ".json"


def write_copick_predictions(
    targets, data, result, *, voxel_spacing: float | None = None, session_id: str = "predict"
) -> str:
    """Predictions as copick picks into each copick config of ``targets`` (user
    ``napari-cryossl``, one picks set per class, the confidence as score); returns a note
    on what was written ("" for no targets)."""
    from napari_cryossl.io.copick import COPICK_USER_ID, write_copick

    if not targets:
        return ""
    table = data.table.copy()
    table["class_number"] = result.class_numbers
    table["probability"] = result.confidence
    spacing = voxel_spacing or data.voxel_size / data.binning
    sets = 0
    for config in targets:
        sets += len(
            write_copick(
                config, table, voxel_spacing=spacing, user_id=COPICK_USER_ID,
                session_id=session_id,
            )
        )
    where = ", ".join(str(t) for t in targets)
    return f" (copick: {sets} picks sets, user {COPICK_USER_ID}, session {session_id}, in {where})"


def write_predictions(
    source: Path, out: Path, table, result, *, data=None, relion5: bool = False
) -> str:
    """Write predictions with the same rows, in the same order, as the input file; returns a
    note on extra files written.

    A STAR output keeps every column of the input STAR (angles, optics groups, ...) and
    sets rlnClassNumber / rlnMaxValueProbDistribution; a CSV output is written from the
    particle table. With `relion5` (or a .tbl output: a Dynamo table) the file is written
    from the particle table in that form (see `write_particle_file`).
    """
    from napari_cryossl.io import replace_star_columns, write_particles

    if relion5 or Path(out).suffix.lower() == ".tbl":
        table = table.copy()
        table["class_number"] = result.class_numbers
        table["probability"] = result.confidence
        voxel = None if data is None else data.voxel_size / data.binning
        records = {} if data is None else data.relion_tomograms
        return write_particle_file(
            table, Path(out), voxel_size=voxel, records=records, relion5=relion5
        )
    if Path(out).suffix.lower() == ".star" and Path(source).suffix.lower() == ".star":
        replace_star_columns(
            source,
            out,
            {
                "rlnClassNumber": result.class_numbers,
                "rlnMaxValueProbDistribution": result.confidence,
            },
        )
    else:
        table = table.copy()
        table["class_number"] = result.class_numbers
        table["probability"] = result.confidence
        write_particles(table, out)
    return ""


def write_rows(source: Path, out: Path, table, rows, columns: dict | None = None) -> None:
    """Write ``rows`` of the input (in that order) with extra ``columns``: a STAR input
    keeps every block and column of the user's file; otherwise the particle table."""
    import numpy as np

    from napari_cryossl.io import replace_star_columns, write_particles

    rows = np.asarray(rows, dtype=np.int64)
    columns = columns or {}
    if Path(out).suffix.lower() == ".star" and Path(source).suffix.lower() == ".star":
        replace_star_columns(source, out, columns, rows=rows)
        return
    subset = table.iloc[rows].reset_index(drop=True).copy()
    for label, values in columns.items():
        subset[label] = list(values)
    write_particles(subset, out)
