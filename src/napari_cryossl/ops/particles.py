"""Where particles come from: a STAR/CSV file (with its tomogram, or a RELION tomogram
set), a copick project, or the tables the dock holds; and the box they are cut at.

One function, `load_particles`, for every operation and every front end, so the CLI and
the dock read the same particles the same way, and a model's box size comes from its
checkpoint unless the user gives another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CopickQuery", "checkpoint_box_size", "load_particles"]


@dataclass(frozen=True)
class CopickQuery:
    """Which tomograms and picks of a copick project to read (None: any)."""

    voxel_spacing: float | None = None
    tomo_type: str | None = None
    object_name: str | None = None
    user_id: str | None = None
    session_id: str | None = None


def checkpoint_box_size(checkpoint, box_size: int | None = None) -> int | None:
    """The box edge to cut for ``checkpoint``: its own, which ``box_size`` (a user's
    choice) must match; ``box_size`` when there is no checkpoint.

    Raises:
        InputError: ``box_size`` differs from the checkpoint's; the message names both.
    """
    if checkpoint is None:
        return box_size
    from napari_cryossl.io.errors import InputError
    from napari_cryossl.nn.checkpoints import load_checkpoint

    if hasattr(checkpoint, "box_size") and not isinstance(checkpoint, dict):  # a module
        trained = int(checkpoint.box_size)
    else:
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        trained = int(state["box_size"])
    if box_size is not None and int(box_size) != trained:
        raise InputError(
            f"{checkpoint if not isinstance(checkpoint, dict) else 'checkpoint'}: was trained "
            f"on {trained}^3 boxes, not --box-size {box_size}; leave out --box-size (or give "
            f"--box-size {trained})"
        )
    return trained


def load_particles(
    particles,
    *,
    tomogram=None,
    box_size: int | None = None,
    checkpoint=None,
    copick: CopickQuery | None = None,
):
    """A ``SubtomogramSet`` of the particles an operation works on.

    Args:
        particles: a STAR/CSV file, a copick project config (.json), an existing
            ``SubtomogramSet`` (returned as it is), or a list of ``(table, tomogram)``
            pairs (the dock's particle tables, one per tomogram).
        tomogram: the tomogram of a coordinate file, or a RELION tomograms.star.
        box_size: box edge in voxels; None: the checkpoint's, else the data's default.
        checkpoint: a model the boxes are for (path, loaded state or encoder module), or
            None.
        copick: which tomograms and picks of a copick project.
    """
    from napari_cryossl.particles.dataset import DEFAULT_BOX_SIZE, SubtomogramSet

    if isinstance(particles, SubtomogramSet):
        return particles
    box = checkpoint_box_size(checkpoint, box_size)
    if isinstance(particles, list | tuple):
        return SubtomogramSet.from_tables(list(particles), box or DEFAULT_BOX_SIZE)
    from napari_cryossl.io.copick import is_copick_config, read_copick

    if is_copick_config(particles):
        q = copick or CopickQuery()
        runs = read_copick(
            particles,
            voxel_spacing=q.voxel_spacing,
            tomo_type=q.tomo_type,
            object_name=q.object_name,
            user_id=q.user_id,
            session_id=q.session_id,
        )
        return SubtomogramSet.from_tables(
            [(table, path) for _, path, table in runs], box or DEFAULT_BOX_SIZE
        )
    if tomogram is not None and Path(tomogram).suffix.lower() == ".star":  # a tomogram set
        return SubtomogramSet.from_star(particles, box_size=box, tomograms=tomogram)
    return SubtomogramSet.from_star(particles, box_size=box, tomogram=tomogram)
