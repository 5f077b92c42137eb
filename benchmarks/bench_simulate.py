"""Simulator throughput: the paper's subtomogram set and crowded tomograms.

Measures, on the CPU (the simulator is numpy/scipy only):
  * subtomograms/s for the paper's set (10 classes x 500, 32³, SNR 0.05), end to end in
    memory (rendering, padded FFT filtering by CTF and missing wedge, noise);
  * seconds and peak memory for crowded tomograms, e.g. the demo's (64, 256, 256) and a
    large (200, 512, 512);
  * optionally the time to write the subtomogram set to disk (`--to-disk`).

    python benchmarks/bench_simulate.py                      # 5,000 subtomograms + tomograms
    python benchmarks/bench_simulate.py --per-class 50 --no-tomograms
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    from napari_cryossl.simulate import (
        SimulationConfig,
        simulate_subtomograms,
        simulate_to_disk,
        simulate_tomogram,
    )

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=None, help="scipy.fft threads")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--no-tomograms", action="store_true")
    parser.add_argument(
        "--tomogram",
        type=int,
        nargs=4,
        action="append",
        metavar=("Z", "Y", "X", "N"),
        help="tomogram shape and particle count (repeatable); "
        "default: 64 256 256 160 and 200 512 512 1500",
    )
    parser.add_argument("--to-disk", action="store_true", help="also time simulate_to_disk")
    args = parser.parse_args(argv)

    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
        f"load {os.getloadavg()[0]:.2f}, threads env {threads}, python {platform.python_version()}"
    )
    config = SimulationConfig(n_classes=args.classes, box_size=args.box, snr=args.snr)
    n = args.classes * args.per_class
    simulate_subtomograms(1, config, seed=0, workers=args.workers)  # warm up (FFT plans)
    best = float("inf")
    volumes = None
    for _ in range(args.repeats):
        volumes = None  # free the previous run's array first
        t0 = time.perf_counter()
        volumes, _ = simulate_subtomograms(args.per_class, config, seed=0, workers=args.workers)
        best = min(best, time.perf_counter() - t0)
    print(
        f"subtomograms: {n} x {args.box}³ (SNR {args.snr}) in {best:.1f} s = "
        f"{n / best:.0f} subtomograms/s; array {volumes.nbytes / 1e6:.0f} MB"
    )
    del volumes

    if args.to_disk:
        small = max(1, min(args.per_class, 100))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            simulate_to_disk(Path(tmp), config, n_per_class=small, seed=0, workers=args.workers)
            dt = time.perf_counter() - t0
        print(f"to disk: {small * args.classes} subtomograms (MRC + STAR) in {dt:.1f} s")

    if not args.no_tomograms:
        for z, y, x, count in args.tomogram or [(64, 256, 256, 160), (200, 512, 512, 1500)]:
            t0 = time.perf_counter()
            volume, table = simulate_tomogram(
                (z, y, x), count, config, seed=0, workers=args.workers
            )
            dt = time.perf_counter() - t0
            del volume
            # memory in a separate, traced run (tracing slows allocations slightly)
            tracemalloc.start()
            volume, table = simulate_tomogram(
                (z, y, x), count, config, seed=0, workers=args.workers
            )
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(
                f"tomogram: {(z, y, x)} with {len(table)} particles in {dt:.1f} s; volume "
                f"{volume.nbytes / 1e6:.0f} MB, peak array memory {peak / 1e6:.0f} MB "
                f"({peak / volume.nbytes:.1f}x the volume)"
            )
            del volume
    print(f"peak RSS of the whole run: {_peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
