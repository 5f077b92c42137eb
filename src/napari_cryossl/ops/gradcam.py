"""Grad-CAM: what the classifier looked at, as heatmaps over the particles."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["GradcamBlock", "gradcam", "gradcam_block"]


def gradcam(
    classifier,
    particles,
    out,
    *,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    settings=None,
    overwrite: bool = False,
):
    """Grad-CAM of every particle, written as MRC files into the folder ``out``: one
    tomogram-sized heatmap per tomogram (``<tomogram stem>_gradcam.mrc``, overlaying it)
    or one per subtomogram. Returns the files written."""
    from napari_cryossl.analysis.saliency import GradcamSettings, iter_gradcam_for_set
    from napari_cryossl.ops.particles import load_particles

    settings = settings or GradcamSettings()
    data = load_particles(
        particles, tomogram=tomogram, box_size=box_size, checkpoint=classifier, copick=copick
    )
    return (
        yield from iter_gradcam_for_set(
            classifier, data, out, overwrite=overwrite, **asdict(settings)
        )
    )


@dataclass
class GradcamBlock:
    """Heatmaps of some particles of one tomogram, pasted into the smallest block of it
    that holds them (as in the tomogram-sized map ``gradcam`` writes)."""

    block: np.ndarray  # (Z, Y, X) float32
    start_zyx: np.ndarray  # the block's first voxel in the tomogram
    centers_zyx: np.ndarray  # (N, 3) the particles' centres in the tomogram
    maps: np.ndarray  # (N, B, B, B) one heatmap per particle
    data: Any = None


def gradcam_block(classifier, table, tomogram, *, settings=None):
    """Grad-CAM of the particles of ``table`` (one tomogram's particle table; ``tomogram``
    an opened ``io.Tomogram``), pasted into the smallest block of the tomogram that holds
    their boxes, with the same rule as the tomogram-sized maps ``gradcam`` writes: what
    the dock shows for a selection."""
    from napari_cryossl.analysis.saliency import GradcamSettings, iter_gradcam, paste_heatmaps
    from napari_cryossl.io import particle_zyx
    from napari_cryossl.ops import results_of
    from napari_cryossl.ops.particles import load_particles

    settings = settings or GradcamSettings()
    data = load_particles([(table, tomogram)], checkpoint=classifier)
    maps = yield from results_of(
        iter_gradcam(
            classifier, data, target_class=settings.target_class, layer=settings.layer,
            device=settings.device, batch_size=settings.batch_size,
        )
    )
    centers = particle_zyx(table)
    lo, size = heatmap_block_bounds(tomogram.shape, centers, int(data.box_size))
    block = paste_heatmaps(tuple(int(s) for s in size), centers - lo, maps)
    return GradcamBlock(block, lo, centers, maps, data)


def heatmap_block_bounds(shape_zyx, centers_zyx: np.ndarray, box_size: int):
    """The block of the tomogram covering every particle's box: (start_zyx, shape_zyx),
    voxels."""
    centers = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, 3)
    shape = np.asarray(shape_zyx, dtype=np.int64)
    half = box_size // 2 + 1
    lo = np.clip(np.floor(centers.min(axis=0)).astype(np.int64) - half, 0, shape)
    hi = np.clip(np.ceil(centers.max(axis=0)).astype(np.int64) + half + 1, 0, shape)
    return lo, np.maximum(hi - lo, 1)
