"""Pick by example: train a picker on labelled particle centres (``cryossl
train-picker``); picking with it is ``ops.pick.pick(..., model=...)``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["train_picker"]


def train_picker(
    particles,
    out,
    *,
    tomogram,
    diameter_a: float | None = None,
    diameter_px: float | None = None,
    steps: int | None = None,
    config=None,
    overwrite: bool = False,
):
    """Train a learned picker on the labelled particles of one tomogram.

    Args:
        particles: a STAR/CSV particle file (coordinates in ``tomogram``'s voxels, or
            RELION 5 centred Å) or a particle table; rows with ``class_number`` > 0 are
            the examples, those with 0 are masked out (not background).
        out: the checkpoint to write (PICKER.pt).
        tomogram: its tomogram (a path or an opened ``io.Tomogram``).
        diameter_a / diameter_px: the particle diameter in Å or voxels; neither:
            estimated from the labelled particles (and stored).
        steps: training steps (default ``PickerConfig.steps``).
        config: ``learned_picker.PickerConfig``.
        overwrite: replace ``out`` if it exists (False: refuse before any work).

    Returns:
        The checkpoint's path.
    """
    from dataclasses import replace

    from napari_cryossl.io import InputError, open_tomogram, read_particles, refuse_to_replace
    from napari_cryossl.particles.learned_picker import PickerConfig, iter_train_picker

    refuse_to_replace([Path(out)], overwrite=overwrite)
    tomo = open_tomogram(tomogram) if isinstance(tomogram, str | Path) else tomogram
    if isinstance(particles, str | Path):
        table = read_particles(particles, tomogram_shape=tomo.shape, voxel_size=tomo.voxel_size)
    else:
        table = particles
    if diameter_a is not None:
        if not diameter_a > 0:
            raise InputError(f"{getattr(tomo, 'path', tomogram)}: the diameter must be positive, got {diameter_a} Å")
        diameter_px = diameter_a / tomo.voxel_size
    config = config or PickerConfig()
    if steps is not None:
        config = replace(config, steps=int(steps))
    path = yield from iter_train_picker(
        [(tomo, table)], diameter_px=diameter_px, config=config, out=out,
        voxel_size=tomo.voxel_size,
    )
    return path
