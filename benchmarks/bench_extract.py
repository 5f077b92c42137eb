"""Subtomogram extraction from a tomogram on disk much larger than the memory it uses.

Writes a float32 MRC tomogram (default ~2 GiB, noise) slab by slab into a temporary folder,
drops it from the page cache (``posix_fadvise(DONTNEED)``, only this file) so the first
reads come from disk, then extracts randomly placed subtomograms in a fresh subprocess
through `napari_cryossl.io.open_tomogram` (memory-mapped) and
`napari_cryossl.extract.iter_subtomogram_batches`, and reports:

- subtomograms per second (cold page cache: every page read from disk once);
- the subprocess's peak resident size (``VmHWM``, includes the mapped file pages that are
  resident at the worst moment; not ``ru_maxrss``, which Linux carries over from the parent
  through fork + exec) and its peak anonymous memory (``RssAnon``: what the process really
  owns), both to compare with the file size.

``RLIMIT_AS`` is not used to prove the point: the memory map alone takes the whole file's
size of address space, so the limit would have to exceed the file anyway.

    python benchmarks/bench_extract.py                       # 2 GiB, 5000 boxes of 32^3
    python benchmarks/bench_extract.py --size-gb 4 --particles 20000 --binning 2
    python benchmarks/bench_extract.py --pick                # also DoG-pick the whole file

Prints a markdown table row; the temporary folder is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_tomogram(path: Path, shape: tuple[int, int, int], voxel_size: float, seed: int) -> None:
    """Stream a noise tomogram to disk without holding it in RAM, then evict it from cache."""
    import mrcfile

    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=2, overwrite=True) as mrc:
        for z in range(shape[0]):
            mrc.data[z] = rng.standard_normal(shape[1:], dtype=np.float32)
        mrc.voxel_size = voxel_size
        # Known statistics of standard normal noise: no need to read 2 GiB back to compute them.
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = -6.0, 6.0, 0.0, 1.0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _peak_rss_mb() -> float:
    """This process's peak resident size since exec (``VmHWM``; ru_maxrss elsewhere)."""
    peak = _memory_mb().get("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def _memory_mb() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:  # not Linux
        pass
    return out


def worker(args: argparse.Namespace) -> dict:
    """Runs in the subprocess: extract (and optionally pick), measuring time and memory."""
    from napari_cryossl.extract import iter_subtomogram_batches
    from napari_cryossl.io import open_tomogram

    start_mem = _memory_mb()
    tomo = open_tomogram(args.path)
    rng = np.random.default_rng(args.seed)
    centers = rng.uniform(0, 1, size=(args.particles, 3)) * np.array(tomo.shape)
    peak_anon = start_mem.get("RssAnon", float("nan"))
    checksum = 0.0
    n_inside = 0
    t0 = time.perf_counter()
    for _, boxes, inside in iter_subtomogram_batches(
        tomo, centers, args.box, args.batch, binning=args.binning
    ):
        checksum += float(boxes[:, 0, 0, 0].sum())
        n_inside += int(inside.sum())
        peak_anon = max(peak_anon, _memory_mb().get("RssAnon", float("nan")))
    seconds = time.perf_counter() - t0
    result = {
        "shape": list(tomo.shape),
        "particles": args.particles,
        "inside": n_inside,
        "seconds": seconds,
        "per_second": args.particles / seconds,
        "peak_anon_mb": peak_anon,
        "peak_rss_mb": _peak_rss_mb(),
        "start_rss_mb": start_mem.get("VmRSS", float("nan")),
    }
    if args.pick:
        from napari_cryossl.picking import pick_particles

        t0 = time.perf_counter()
        picks = pick_particles(tomo, args.pick_diameter)
        result["pick_seconds"] = time.perf_counter() - t0
        result["pick_mvoxels_per_second"] = (
            float(np.prod(tomo.shape)) / 1e6 / result["pick_seconds"]
        )
        result["picks"] = len(picks)
        result["peak_rss_after_pick_mb"] = _peak_rss_mb()
    return result


def machine() -> str:
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM"
    except ImportError:
        ram = "RAM ?"
    return f"{platform.machine()} {os.cpu_count()} cores, {ram}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-gb", type=float, default=2.0, help="tomogram file size (GiB, float32)")
    p.add_argument("--depth", type=int, default=128, help="tomogram z size (voxels)")
    p.add_argument("--particles", type=int, default=5000)
    p.add_argument("--box", type=int, default=32, help="box edge (binned voxels)")
    p.add_argument("--binning", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="folder for the temporary tomogram")
    p.add_argument("--keep", action="store_true", help="keep the tomogram file")
    p.add_argument("--pick", action="store_true", help="also DoG-pick the whole tomogram")
    p.add_argument("--pick-diameter", type=float, default=10.0)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker is not None:
        args.path = args.worker
        print(json.dumps(worker(args)))
        return 0

    side = int(np.sqrt(args.size_gb * 1024**3 / 4 / args.depth))
    shape = (args.depth, side, side)
    folder = Path(tempfile.mkdtemp(prefix="bench_extract_", dir=args.dir))
    path = folder / "big_tomogram.mrc"
    try:
        t0 = time.perf_counter()
        write_tomogram(path, shape, voxel_size=10.0, seed=args.seed)
        write_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1024**2
        cmd = [sys.executable, __file__, "--worker", str(path)]
        for key in ("particles", "box", "binning", "batch", "seed"):
            cmd += [f"--{key}", str(getattr(args, key))]
        if args.pick:
            cmd += ["--pick", "--pick-diameter", str(args.pick_diameter)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"tomogram {shape} float32, {size_mb:.0f} MiB written in {write_s:.1f} s; {machine()}")
    print(json.dumps(res, indent=1))
    print()
    print(
        "| file MiB | tomogram ZYX | boxes | box | binning | subtomograms/s | peak RSS MiB | "
        "peak anon MiB | RSS / file |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {size_mb:.0f} | {'x'.join(map(str, shape))} | {res['particles']} | {args.box} | "
        f"{args.binning} | {res['per_second']:.0f} | {res['peak_rss_mb']:.0f} | "
        f"{res['peak_anon_mb']:.0f} | {res['peak_rss_mb'] / size_mb:.2f} |"
    )
    if args.pick:
        print(
            f"\npicking (d={args.pick_diameter:g} px): {res['pick_seconds']:.1f} s, "
            f"{res['pick_mvoxels_per_second']:.1f} Mvoxel/s, {res['picks']} picks, peak RSS "
            f"{res['peak_rss_after_pick_mb']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
