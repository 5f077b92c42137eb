"""Simulated data sets on disk: `simulate_to_disk` (what `cryossl simulate` writes).

Subtomogram MRCs with their STAR file and, optionally, a crowded tomogram with its
picks, plus the settings as JSON; every file is written atomically through
`napari_cryossl.io`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

from napari_cryossl.io import (
    InputError,
    atomic_write,
    make_particle_table,
    write_mrc,
    write_particles,
)
from napari_cryossl.simulate.clutter import write_clutter
from napari_cryossl.simulate.config import SimulationConfig, _seeds
from napari_cryossl.simulate.shapes import class_names
from napari_cryossl.simulate.subtomograms import simulate_subtomograms
from napari_cryossl.simulate.tomogram import simulate_tomogram_details

# --------------------------------------------------------------------------- files


def simulate_to_disk(
    out_dir: Path | str,
    config: SimulationConfig,
    *,
    n_per_class: int,
    tomogram_shape: tuple[int, int, int] | None = None,
    n_tomogram_particles: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Write a simulated subtomogram set and/or a crowded tomogram.

    Layout of `out_dir`:

    - ``particles.star``: ``rlnImageName`` (paths relative to the STAR file) and
      ``rlnClassNumber`` of every subtomogram, one MRC each under ``subtomograms/``;
    - ``tomogram.mrc`` and ``tomogram_particles.star`` (``rlnCoordinateX/Y/Z`` in
      pixels, ``rlnTomoName``, ``rlnClassNumber``), when `tomogram_shape` is given;
    - ``clutter.csv``: the tomogram's clutter (`simulate.clutter.CLUTTER_COLUMNS`: kind,
      x, y, z in the same voxels as the particles, geometry, density), when it holds any;
    - ``simulation.json``: the settings, the seed and the class names.

    Args:
        out_dir: output folder (created).
        config: simulation settings.
        n_per_class: subtomograms per class; 0 writes no subtomogram set.
        tomogram_shape: ZYX shape of a tomogram to simulate, or None for none.
        n_tomogram_particles: particles in the tomogram (default 100).
        seed: both outputs are functions of the settings and the seed.
        workers: threads for scipy.fft.
        progress: called as ``progress(stage, done, total)``: stage "simulate" (chunks
            of subtomograms), "write" (subtomogram files), "tomogram" (0 then 1).

    Returns:
        Paths by key: ``particles_star``, ``tomogram``, ``tomogram_particles_star``,
        ``clutter`` (those written) and ``metadata``.
    """
    out = Path(out_dir)
    _seeds(seed)  # bad seeds fail before anything is written
    if n_per_class == 0 and tomogram_shape is None:
        raise InputError(f"{out}: nothing to simulate (n_per_class is 0 and no tomogram_shape)")
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if n_per_class:
        volumes, labels = simulate_subtomograms(
            n_per_class,
            config,
            seed=seed,
            workers=workers,
            progress=None if progress is None else partial(progress, "simulate"),
        )
        folder = out / "subtomograms"
        folder.mkdir(exist_ok=True)
        names = [os.path.abspath(folder / f"subtomo_{i + 1:06d}.mrc") for i in range(len(volumes))]
        # write_mrc is atomic (fsync per file): a few threads overlap the waits on disk
        with ThreadPoolExecutor(max_workers=4) as pool:
            writes = pool.map(
                lambda i: write_mrc(names[i], volumes[i], config.voxel_size), range(len(names))
            )
            for done, _ in enumerate(writes, 1):
                if progress is not None and (done % 64 == 0 or done == len(names)):
                    progress("write", done, len(names))
        del volumes
        table = make_particle_table(None, class_number=labels, image_name=names, source="simulated")
        paths["particles_star"] = out / "particles.star"
        write_particles(table, paths["particles_star"], voxel_size=config.voxel_size)
    if tomogram_shape is not None:
        n_tomo = 100 if n_tomogram_particles is None else n_tomogram_particles
        if progress is not None:
            progress("tomogram", 0, 1)
        result = simulate_tomogram_details(
            tuple(tomogram_shape), n_tomo, config, seed=seed, workers=workers
        )
        volume, table, clutter = result.volume, result.particles, result.clutter
        del result  # the volume is freed once written
        paths["tomogram"] = out / "tomogram.mrc"
        write_mrc(paths["tomogram"], volume, config.voxel_size)
        del volume
        if progress is not None:
            progress("tomogram", 1, 1)
        table["tomo_name"] = paths["tomogram"].name
        paths["tomogram_particles_star"] = out / "tomogram_particles.star"
        write_particles(
            table,
            paths["tomogram_particles_star"],
            voxel_size=config.voxel_size,
            tomogram_shape=tuple(tomogram_shape),
        )
        if len(clutter):
            paths["clutter"] = write_clutter(clutter, out / "clutter.csv")
    meta = {
        "config": asdict(config),
        "seed": seed,
        "class_names": {
            str(i + 1): name
            for i, name in enumerate(class_names(config.n_classes, config.structures))
        },
        "n_per_class": n_per_class,
        "tomogram_shape": list(tomogram_shape) if tomogram_shape is not None else None,
        "n_tomogram_particles": n_tomogram_particles,
    }
    paths["metadata"] = out / "simulation.json"
    with atomic_write(paths["metadata"]) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return paths
