"""Pick by example: train a picker on labelled particle centres (``cryossl
train-picker``, the dock's "Find more like these"); picking with it is
``ops.pick.pick(..., model=...)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CANDIDATE_THRESHOLD", "FindMoreResult", "find_more", "picker_examples", "train_picker"]

#: "Find more like these" picks once at this heatmap value, so every candidate comes back
#: with its score and a score slider chooses among them without picking again.
CANDIDATE_THRESHOLD = 0.05


@dataclass
class FindMoreResult:
    """What a round made: the picker file, its candidates (particle table in voxels, best
    first, ``score`` in 0..1, ``class_number`` the predicted class) and the heatmap (the
    tomogram's shape, float32, the highest particle-class probability per voxel)."""

    picker: Path
    table: Any
    heatmap: np.ndarray


def picker_examples(particles, *, tomogram=None, copick=None):
    """``(tomogram, particle table)`` pairs of the examples, in each tomogram's voxels.

    Args:
        particles: a STAR/CSV file with its ``tomogram`` (an MRC/OME-Zarr file, or a
            RELION ``tomograms.star`` listing several), a copick project config (.json,
            ``copick`` a ``CopickQuery``), or ``(table, tomogram)`` pairs (the dock's
            tables; a tomogram is a path or an opened ``io.Tomogram``).
    """
    from napari_cryossl.io import InputError, open_tomogram
    from napari_cryossl.ops.particles import load_particles

    if isinstance(particles, list | tuple):
        pairs = [
            (open_tomogram(t) if isinstance(t, str | Path) else t, table)
            for table, t in particles
        ]
    else:
        pairs = load_particles(particles, tomogram=tomogram, copick=copick).per_tomogram()
    if not pairs:
        raise InputError(f"{particles}: no particles to learn from")
    return pairs


def train_picker(
    particles,
    out,
    *,
    tomogram=None,
    copick=None,
    diameter_a: float | None = None,
    diameter_px: float | None = None,
    steps: int | None = None,
    config=None,
    init=None,
    classes=None,
    overwrite: bool = False,
):
    """Train a learned picker on the labelled particles of one or more tomograms.

    Args:
        particles: what `picker_examples` reads: a STAR/CSV file (coordinates in
            ``tomogram``'s voxels, or RELION 5 centred Å), a copick config, or
            ``(table, tomogram)`` pairs; rows with ``class_number`` > 0 are the
            examples, those with 0 are masked out (not background).
        out: the checkpoint to write (PICKER.pt).
        tomogram: the tomogram of a coordinate file, or a RELION tomograms.star.
        copick: ``ops.particles.CopickQuery`` for a copick project.
        diameter_a / diameter_px: the particle diameter in Å or voxels; neither:
            ``init``'s, else estimated from the labelled particles (and stored).
        steps: training steps (default ``PickerConfig.steps``).
        config: ``learned_picker.PickerConfig``.
        init: a picker checkpoint to continue from (the next round).
        classes: {class number: name}; default: the names the file gives (a copick
            project's objects, a STAR's data_classes block), else ``init``'s, else the
            class numbers.
        overwrite: replace ``out`` if it exists (False: refuse before any work).

    Returns:
        The checkpoint's path.
    """
    from dataclasses import replace

    from napari_cryossl.io import InputError, refuse_to_replace
    from napari_cryossl.particles.learned_picker import PickerConfig, iter_train_picker

    refuse_to_replace([Path(out)], overwrite=overwrite)
    pairs = picker_examples(particles, tomogram=tomogram, copick=copick)
    if classes is None and isinstance(particles, str | Path):
        classes = _class_names(Path(particles), pairs, init)
    sizes = sorted({float(t.voxel_size) for t, _ in pairs if hasattr(t, "voxel_size")})
    if len(sizes) > 1:
        raise InputError(
            f"{particles}: the tomograms have different voxel sizes ({sizes} Å); a picker "
            "learns one pixel size"
        )
    voxel_size = sizes[0] if sizes else None
    if diameter_a is not None:
        if not diameter_a > 0:
            raise InputError(f"{particles}: the diameter must be positive, got {diameter_a} Å")
        if voxel_size is None:
            raise InputError(f"{particles}: the tomograms' voxel size is unknown; give the diameter in voxels")
        diameter_px = diameter_a / voxel_size
    config = config or PickerConfig()
    if steps is not None:
        config = replace(config, steps=int(steps))
    path = yield from iter_train_picker(
        pairs, diameter_px=diameter_px, classes=classes, config=config, out=out,
        voxel_size=voxel_size, init=init,
    )
    return path


def _class_names(particles: Path, pairs, init) -> dict[int, str] | None:
    """{class number: name} of the labelled classes when the input names them (a copick
    project's particle objects, a STAR's data_classes block with cryosslClassName, as the
    dock's annotation file has), else None (numbers, or the names ``init`` knows)."""
    names = _class_names_in(particles)
    if not names:
        return None
    import numpy as np

    numbers = np.concatenate([t["class_number"].to_numpy() for _, t in pairs])
    known = {}
    if init is not None:
        from napari_cryossl.particles.learned_picker import picker_metadata

        meta = picker_metadata(init)
        known = dict(zip(meta["class_numbers"], meta["class_names"], strict=True))
    return {
        int(k): names.get(int(k)) or known.get(int(k)) or str(int(k))
        for k in sorted(set(numbers.tolist()) - {0})
    }


def _class_names_in(path: Path) -> dict[int, str]:
    """Class names a particle file or copick config gives, {} when it gives none."""
    import json

    from napari_cryossl.io.copick import is_copick_config

    if is_copick_config(path):
        objects = json.loads(path.read_text(encoding="utf-8")).get("pickable_objects") or []
        return {
            int(o["label"]) if o.get("label") is not None else 1: str(o["name"])
            for o in objects
            if isinstance(o, dict) and o.get("is_particle", True) and o.get("name")
        }
    if path.suffix.lower() != ".star" or not path.is_file():
        return {}
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception:  # noqa: BLE001 - the particle reader reports what is wrong
        return {}
    for block in blocks.values():
        if hasattr(block, "columns") and {"rlnClassNumber", "cryosslClassName"} <= set(
            block.columns
        ) and "rlnCoordinateX" not in block.columns:
            return {
                int(k): str(n)
                for k, n in zip(block["rlnClassNumber"], block["cryosslClassName"], strict=True)
                if str(n)
            }
    return {}


def find_more(
    pairs,
    tomogram,
    out,
    *,
    init=None,
    classes=None,
    steps: int | None = None,
    diameter_px: float | None = None,
    threshold: float = CANDIDATE_THRESHOLD,
):
    """One round of "Find more like these": train a picker, then pick with it.

    A generator of `base.status.Progress` (stage "train picker", then "pick") that returns
    a `FindMoreResult`; the dock's "Find more like these" runs it in a thread worker.

    Args:
        pairs: ``(table, tomogram)`` pairs to learn from (`ops.picker.train_picker`).
        tomogram: the opened ``io.Tomogram`` (or path) to pick in.
        out: the new picker file (never replaced: the caller chooses an unused name).
        init: the previous round's picker to continue from, or None.
        classes: {class number: name} to learn (a class named "not a particle" is
            learned as negatives).
        steps: training steps (None: the core's default, ``PickerConfig.steps``).
        diameter_px: the particle diameter in voxels (None: ``init``'s, or estimated).
        threshold: the lowest heatmap peak kept as a candidate.
    """
    from napari_cryossl.io import open_tomogram
    from napari_cryossl.ops.pick import pick
    from napari_cryossl.particles.picking import PickSettings

    picker = yield from train_picker(
        pairs, out, init=init, classes=classes, steps=steps, diameter_px=diameter_px
    )
    tomo = open_tomogram(tomogram) if isinstance(tomogram, str | Path) else tomogram
    heatmap = np.zeros(tuple(int(n) for n in tomo.shape), dtype=np.float32)
    output = yield from pick(
        tomo, model=picker, settings=PickSettings(threshold=float(threshold)), heatmap=heatmap
    )
    return FindMoreResult(Path(picker), output.table, heatmap)
