"""Picking: particle candidates in a tomogram, by Difference of Gaussians (moved to each
particle's centre), by template matching or by a learned picker (``model``), written
where asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PickOutput", "PicksOutput", "pick", "pick_tomograms", "tomogram_entries"]


@dataclass
class PickOutput:
    """The picks (particle table, best first), the diameter used in voxels, the tomogram,
    a note on what was written, and the template search's facts (threshold, noise σ,
    rotations) when a template was matched."""

    table: Any
    diameter_px: float
    tomogram: Any
    note: str = ""
    matching: dict = field(default_factory=dict)


def pick(
    tomogram,
    *,
    diameter_a: float | None = None,
    diameter_px: float | None = None,
    settings=None,
    template=None,
    matching=None,
    out=None,
    relion5: bool = False,
    overwrite: bool = False,
    model=None,
    heatmap=None,
    views: int | None = None,
):
    """Pick particles in ``tomogram`` (a path or an opened ``io.Tomogram``).

    Args:
        diameter_a / diameter_px: the particle diameter in Å or voxels; optional with a
            template (then it comes from the template's size).
        settings: ``picking.PickSettings``.
        template: a density map file, an atomic model or a built-in complex name: match
            it (``template_matching``) instead of DoG; ``matching`` its settings.
        out: STAR, CSV or Dynamo .tbl to write (RELION 5 with ``relion5``); template
            picks carry their orientations (rlnAngleRot/Tilt/Psi) in a STAR.
        overwrite: replace existing output files (False: refuse before any work).
        model: a picker checkpoint (``cryossl train-picker``): pick with it instead; the
            diameter is the checkpoint's, the threshold a probability (default 0.2) and
            each pick has its class (rlnClassNumber) and score.
        heatmap: with ``model``: an array of the tomogram's shape to fill with the
            picker's heatmap (the highest probability of a particle class per voxel).
        views: with ``model``: symmetric views averaged (1-8; None: the picker's
            default, 4; 1 is about 2.4 times faster).

    Returns:
        ``PickOutput``.
    """
    from napari_cryossl.io import InputError, open_tomogram, refuse_to_replace
    from napari_cryossl.ops.outputs import tomograms_star_beside
    from napari_cryossl.particles.picking import PickSettings, iter_pick_particles

    settings = settings or PickSettings()
    if out is not None:
        files = [Path(out)] + ([tomograms_star_beside(out)] if relion5 else [])
        refuse_to_replace(files, overwrite=overwrite)
    tomo = open_tomogram(tomogram) if isinstance(tomogram, str | Path) else tomogram
    where = getattr(tomo, "path", tomogram)
    if diameter_a is not None:
        if not diameter_a > 0:
            raise InputError(f"{where}: the diameter must be positive, got {diameter_a} Å")
        diameter_px = diameter_a / tomo.voxel_size
    elif diameter_px is None and template is None and model is None:
        raise InputError(
            f"{where}: give the particle diameter (--diameter in Å or --diameter-px), or a "
            "--template"
        )
    attrs: dict = {}
    if template is not None:
        from napari_cryossl.particles.template_matching import (
            TemplateMatchSettings,
            iter_match_template,
            load_template,
        )

        density = load_template(template, tomo.voxel_size)
        shared = asdict(settings)
        shared.pop("refine")  # DoG only: template picks are centred by construction
        table = yield from iter_match_template(
            tomo.data, density, diameter_px=diameter_px, **shared,
            **asdict(matching or TemplateMatchSettings()),
        )
        attrs = dict(table.attrs)
        diameter_px = float(attrs["diameter_px"])
    elif model is not None:
        from napari_cryossl.particles.learned_picker import iter_pick_with_model

        table = yield from iter_pick_with_model(
            tomo.data, model, threshold=settings.threshold,
            min_distance_px=settings.min_distance_px, max_particles=settings.max_particles,
            heatmap=heatmap, tta=views,
        )
        diameter_px = float(table.attrs["diameter_px"])
    else:
        table = yield from iter_pick_particles(tomo.data, diameter_px, **asdict(settings))
    note = ""
    if out is not None:
        note = _write_picks(table, tomo, Path(out), relion5=relion5, angles=template is not None)
    return PickOutput(table, float(diameter_px), tomo, note, attrs)


def _write_picks(table, tomo, out: Path, *, relion5: bool, angles: bool) -> str:
    """The picks as ``out`` (the tomogram named as seen from its folder, so later
    commands find it from anywhere); returns a note on extra files and columns."""
    from napari_cryossl.io import RelionTomogram, write_particles
    from napari_cryossl.ops.outputs import tomogram_reference, write_particle_file

    name = tomogram_reference(Path(tomo.path), out)
    table["tomo_name"] = name
    if out.suffix.lower() in (".star", ".csv") and not relion5:
        write_particles(table, out, voxel_size=tomo.voxel_size, tomogram_shape=tomo.shape)
        note = ""
    else:
        note = write_particle_file(
            table, out, voxel_size=tomo.voxel_size,
            records={name: RelionTomogram.from_tomogram(tomo, name=name)}, relion5=relion5,
        )
    if angles:
        note += _write_angles(table, out)
    return note


def _write_angles(table, out: Path) -> str:
    """Add the picks' orientations (rlnAngleRot/Tilt/Psi) to a written STAR file."""
    from napari_cryossl.io import replace_star_columns
    from napari_cryossl.particles.template_matching import ANGLE_COLUMNS, ANGLE_LABELS

    if out.suffix.lower() != ".star" or len(table) == 0:
        return " (orientations are written to STAR files only)" if len(table) else ""
    columns = {
        label: table[col].to_numpy(dtype=float)
        for label, col in zip(ANGLE_LABELS, ANGLE_COLUMNS, strict=True)
    }
    replace_star_columns(out, out, columns)
    return ", with orientations (rlnAngleRot/Tilt/Psi)"


# ---------------------------------------------------------------- several tomograms, one file


@dataclass
class PicksOutput:
    """Picks of several tomograms written to one file: every pick in ``table`` (its
    ``tomo_name`` names its tomogram, as rlnTomoName), each tomogram's `PickOutput` in
    ``per_tomogram`` (in the order given) and a note on what was written."""

    table: Any
    per_tomogram: list = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class _Entry:
    path: Path
    name: str | None = None  # rlnTomoName from a tomogram set or a copick run, else None
    record: Any = None  # the tomogram set's RelionTomogram (binning, size), else None


def tomogram_entries(tomograms, *, copick=None) -> list[_Entry]:
    """The tomograms `tomograms` stands for: MRC/OME-Zarr paths as they are, every
    tomogram a RELION ``tomograms.star`` lists (named by its rlnTomoName) and every run's
    tomogram of a copick config .json (``copick``: an ``ops.particles.CopickQuery``;
    named by its path, so later commands find it from the STAR)."""
    from napari_cryossl.io import InputError, read_tomograms_star
    from napari_cryossl.io.copick import is_copick_config, read_copick

    items = [tomograms] if isinstance(tomograms, str | Path) else list(tomograms)
    entries: list[_Entry] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".star":
            records = read_tomograms_star(path)
            if not records:
                raise InputError(f"{path}: the tomogram set lists no tomograms")
            for name, record in records.items():
                if record.path is None or not Path(record.path).exists():
                    raise InputError(
                        f"{path}: tomogram {name!r}: its reconstruction "
                        f"(rlnTomoReconstructedTomogram) {record.path or 'is not named'}"
                        f"{' does not exist' if record.path else ''}"
                    )
                entries.append(_Entry(Path(record.path), name, record))
        elif is_copick_config(path):
            q = copick
            runs = read_copick(
                path,
                voxel_spacing=getattr(q, "voxel_spacing", None),
                tomo_type=getattr(q, "tomo_type", None),
            )
            entries += [_Entry(Path(tomo)) for _, tomo, _ in runs]
        else:
            entries.append(_Entry(path))
    if not entries:
        raise InputError("pick: no tomogram given")
    seen: dict[str, Path] = {}
    for e in entries:
        key = str(Path(e.path).resolve())
        if key in seen:
            raise InputError(f"{e.path}: this tomogram is given twice")
        seen[key] = e.path
    return entries


def _check_picker_voxel_size(model, tomos) -> None:
    """A picker learnt one voxel size: every tomogram must have it (within 1 %)."""
    from napari_cryossl.io import InputError
    from napari_cryossl.particles.learned_picker import picker_metadata

    meta = picker_metadata(model)  # a file that is not a picker is named here
    trained = meta.get("voxel_size")
    sizes = [float(t.voxel_size) for t in tomos]
    reference = float(trained) if trained else sizes[0]
    for tomo, size in zip(tomos, sizes, strict=True):
        if abs(size - reference) > 0.01 * reference:
            where = f"the picker {model} was trained at" if trained else "the first tomogram has"
            raise InputError(
                f"{tomo.path}: voxel size {size:g} Å, but {where} {reference:g} Å; a picker "
                "finds particles at its own voxel size only (bin or rescale the tomogram, or "
                "train a picker at this voxel size)"
            )


def pick_tomograms(
    tomograms,
    *,
    out=None,
    relion5: bool = False,
    overwrite: bool = False,
    copick=None,
    **options,
):
    """Pick in one or more tomograms and write every pick into one file.

    Args:
        tomograms: a path or a list of paths: MRC / OME-Zarr tomograms, RELION
            ``tomograms.star`` files (every tomogram listed, rlnTomoName kept) and copick
            configs (every run's tomogram; ``copick`` an ``ops.particles.CopickQuery``
            choosing the voxel spacing and type).
        out: the STAR, CSV or Dynamo .tbl to write (RELION 5 with ``relion5``); each pick's
            ``tomo_name`` (rlnTomoName) is its tomogram set's name, else the tomogram's
            path as seen from ``out``'s folder.
        overwrite: replace existing output files (False: refuse before any work).
        options: what `pick` takes for each tomogram (``diameter_a``, ``diameter_px``,
            ``settings``, ``template``, ``matching``, ``model``). With ``model`` every
            tomogram must have the picker's voxel size.

    Every tomogram is opened (and the model read) before any work, so a missing file stops
    the run at once. One tomogram without a set name gives the file `pick` writes.

    Returns:
        ``PicksOutput``.
    """
    import dataclasses
    import math
    import time

    import pandas as pd

    from napari_cryossl.io import RelionTomogram, open_tomogram, refuse_to_replace
    from napari_cryossl.ops.outputs import (
        tomogram_reference,
        tomograms_star_beside,
        write_particle_file,
    )

    if out is not None:
        files = [Path(out)] + ([tomograms_star_beside(out)] if relion5 else [])
        refuse_to_replace(files, overwrite=overwrite)
    entries = tomogram_entries(tomograms, copick=copick)
    tomos = [open_tomogram(e.path) for e in entries]
    if options.get("model") is not None:
        _check_picker_voxel_size(options["model"], tomos)
    if len(entries) == 1 and entries[0].name is None:  # the one-tomogram file, as before
        result = yield from pick(tomos[0], out=out, relion5=relion5, overwrite=True, **options)
        return PicksOutput(result.table, [(str(tomos[0].path), result)], result.note)

    t0 = time.perf_counter()
    voxels = [float(math.prod(t.shape)) for t in tomos]
    names, results, tables = [], [], []
    offset = 0
    for i, (entry, tomo) in enumerate(zip(entries, tomos, strict=True)):
        name = entry.name
        if name is None:
            name = tomogram_reference(Path(tomo.path), Path(out)) if out is not None else str(tomo.path)
        label = f"{name} ({i + 1}/{len(entries)})"
        inner = pick(tomo, **options)
        last = 0
        try:
            while True:
                status = next(inner)
                n = max(int(status.n_steps), 1)
                left = sum(voxels[i:]) / voxels[i]
                last = int(status.step)
                yield dataclasses.replace(
                    status, stage=f"{status.stage}: {label}", step=offset + last,
                    n_steps=offset + round(n * left), elapsed_s=time.perf_counter() - t0,
                    done=False,
                )
        except StopIteration as stop:
            result = stop.value
        finally:
            inner.close()
        offset += last
        table = result.table.copy()
        table["tomo_name"] = name
        names.append(name)
        results.append((name, result))
        tables.append(table)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    note = ""
    if out is not None:
        out = Path(out)
        records = {
            name: e.record if e.record is not None else RelionTomogram.from_tomogram(t, name=name)
            for name, e, t in zip(names, entries, tomos, strict=True)
        }
        sizes = {float(t.voxel_size) for t in tomos}
        note = write_particle_file(
            table, out, voxel_size=sizes.pop() if len(sizes) == 1 else None,
            records=records, relion5=relion5,
        )
        if options.get("template") is not None:
            note += _write_angles(table, out)
    return PicksOutput(table, results, note)
