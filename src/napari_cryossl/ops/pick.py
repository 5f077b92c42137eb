"""Picking: particle candidates in a tomogram, by Difference of Gaussians (moved to each
particle's centre), by template matching or by a learned picker (``model``), written
where asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PickOutput", "pick"]


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
            diameter is the checkpoint's, the threshold a probability (default 0.3) and
            each pick has its class (rlnClassNumber) and score.

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
