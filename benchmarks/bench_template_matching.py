"""Time per tomogram of DoG picking, refined DoG picking and template matching.

A simulated 128 x 256 x 256 tomogram (4 synthetic classes of 20-voxel particles, CTF,
±60° wedge, SNR 0.1). Template matching uses class 1's true template; on a CPU the
default angular step (atan(resolution / diameter), tens of thousands of rotations) takes
hours, so it runs at ``--angular-step`` (default 30°) and the time of the default step is
extrapolated from the time per rotation.

    .venv/bin/python benchmarks/bench_template_matching.py [--angular-step 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import date

import numpy as np
from scipy.spatial import cKDTree


def recall_precision(true, picked, radius):
    if len(picked) == 0:
        return 0.0, 0.0
    dist, idx = cKDTree(true).query(picked, distance_upper_bound=radius)
    found = {int(idx[i]) for i in np.argsort(dist) if np.isfinite(dist[i])}
    return len(found) / len(true), len(found) / len(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256))
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--angular-step", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    from napari_cryossl.particles.picking import pick_particles
    from napari_cryossl.particles.template_matching import (
        default_angular_step,
        match_template,
        rotation_set,
    )
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram
    from napari_cryossl.simulate.render import _render
    from napari_cryossl.simulate.shapes import _assemblies

    config = SimulationConfig(n_classes=4, box_size=32, snr=0.1, particle_diameter_a=200.0)
    volume, truth = simulate_tomogram(tuple(args.shape), args.particles, config, seed=0)
    d = config.particle_diameter_px
    zyx = truth[["z", "y", "x"]].to_numpy(float)
    print(
        f"{date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, load {os.getloadavg()[0]:.1f}; tomogram {tuple(args.shape)}, "
        f"{args.particles} particles of {d:.0f} voxels, SNR 0.1"
    )

    for refine in (False, True):
        t0 = time.perf_counter()
        table = pick_particles(volume, d, refine=refine)
        dt = time.perf_counter() - t0
        r2, p2 = recall_precision(zyx, table[["z", "y", "x"]].to_numpy(float), d / 2)
        r4, _ = recall_precision(zyx, table[["z", "y", "x"]].to_numpy(float), d / 4)
        print(
            f"DoG{' refined' if refine else ''}: {dt:.1f} s, {len(table)} picks, recall "
            f"{r2:.1%} within d/2 ({r4:.1%} within d/4), precision {p2:.1%}"
        )

    a = _assemblies(config)[0]
    size = int(2 * math.ceil(a.radius) + 3)
    template = _render(
        (a.centres_xyz[:, ::-1] + size // 2)[None], a.sigmas[None], a.weights[None], (size,) * 3
    )[0]
    rotations = rotation_set(args.angular_step)
    t0 = time.perf_counter()
    table = match_template(volume, template, rotations=rotations, cpu_threads=args.threads)
    dt = time.perf_counter() - t0
    ring = zyx[truth["class_number"].to_numpy() == 1]
    r, p = recall_precision(ring, table[["z", "y", "x"]].to_numpy(float), d / 4)
    per = dt / len(rotations)
    default = default_angular_step(table.attrs["diameter_px"], table.attrs["resolution_px"])
    n_default = len(rotation_set(default))
    print(
        f"template matching, {args.angular_step:g}° ({len(rotations)} rotations): {dt:.1f} s "
        f"({per * 1e3:.0f} ms per rotation), {len(table)} picks, class-1 recall {r:.1%} "
        f"within d/4, precision {p:.1%}; the default step {default:.1f}° "
        f"({n_default} rotations) would take about {per * n_default / 3600:.1f} h here"
    )


if __name__ == "__main__":
    main()
