"""Subtomogram extraction from a tomogram on disk much larger than the memory it uses.

Writes a float32 MRC tomogram (default ~2 GiB, noise) slab by slab into a temporary folder,
drops it from the page cache (``posix_fadvise(DONTNEED)``, only this file) so the first
reads come from disk, then extracts randomly placed subtomograms in a fresh subprocess
through `napari_cryossl.io.open_tomogram` (memory-mapped) and
`napari_cryossl.particles.extract.iter_subtomogram_batches`, and reports:

- subtomograms per second (cold page cache: every page read from disk once);
- the subprocess's peak resident size (``VmHWM``, includes the mapped file pages that are
  resident at the worst moment; not ``ru_maxrss``, which Linux carries over from the parent
  through fork + exec) and its peak anonymous memory (``RssAnon``: what the process really
  owns), both to compare with the file size.

``RLIMIT_AS`` is not used to prove the point: the memory map alone takes the whole file's
size of address space, so the limit would have to exceed the file anyway.

With ``--format zarr`` (or ``both``) the same voxels are also written as an OME-Zarr image
(NGFF 0.4: level 0 in ``--zarr-chunks``³ chunks, zarr's default compression, plus a
4×-binned level), evicted from the page cache chunk file by chunk file, and measured the
same way through ``open_tomogram("….zarr")``: a box or a picking chunk reads only the Zarr
chunks it overlaps, so the resident size stays far below the array's size.

    python benchmarks/bench_extract.py                       # 2 GiB, 5000 boxes of 32^3
    python benchmarks/bench_extract.py --size-gb 4 --particles 20000 --binning 2
    python benchmarks/bench_extract.py --pick                # also DoG-pick the whole file
    python benchmarks/bench_extract.py --pick --format both  # MRC and its OME-Zarr copy

Prints a markdown table row per format; the temporary folder is removed unless --keep.
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
    _evict(path)


def write_ome_zarr_copy(mrc_path: Path, path: Path, chunk: int, voxel_size: float) -> None:
    """Copy an MRC tomogram into an OME-Zarr image (NGFF 0.4) slab by slab, without holding
    it in RAM: level 0 in ``chunk``³ chunks and a 4×-binned level 1; then evict its files
    from the page cache."""
    import mrcfile
    import zarr

    with mrcfile.mmap(mrc_path, mode="r") as mrc:
        data = mrc.data
        nz, ny, nx = data.shape
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        level0 = group.create_array("0", shape=data.shape, dtype="float32", chunks=(chunk,) * 3)
        b = 4
        level1 = group.create_array(
            "1", shape=(nz // b, ny // b, nx // b), dtype="float32", chunks=(chunk,) * 3
        )
        # Slabs of whole chunks (~256 MiB, at least one chunk row): no chunk is written twice.
        rows = max(1, 256 * 1024**2 // (chunk * nx * 4) // chunk) * chunk
        for z0 in range(0, nz, chunk):
            for y0 in range(0, ny, rows):
                slab = np.asarray(data[z0 : z0 + chunk, y0 : y0 + rows], dtype=np.float32)
                level0[z0 : z0 + chunk, y0 : y0 + rows] = slab
                sz, sy, sx = (s // b * b for s in slab.shape)
                binned = (
                    slab[:sz, :sy, :sx]
                    .reshape(sz // b, b, sy // b, b, sx // b, b)
                    .mean(axis=(1, 3, 5), dtype=np.float64)
                    .astype(np.float32)
                )
                level1[z0 // b : z0 // b + sz // b, y0 // b : y0 // b + sy // b, : sx // b] = binned
                del slab, binned
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "tomogram",
            "axes": axes,
            "datasets": [
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [s] * 3}]}
                for i, s in enumerate((voxel_size, voxel_size * b))
            ],
        }
    ]
    for chunk_file in path.rglob("*"):
        if chunk_file.is_file():
            _evict(chunk_file)


def _evict(path: Path) -> None:
    """Write `path` to disk and drop it from the page cache, so the first reads hit the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _dir_size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1024**2
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024**2


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
    from napari_cryossl.io import open_tomogram
    from napari_cryossl.particles.extract import iter_subtomogram_batches

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
        "format": "zarr" if tomo.levels else "mrc",
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
        from napari_cryossl.particles.picking import pick_particles

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
    p.add_argument(
        "--format",
        choices=("mrc", "zarr", "both"),
        default="mrc",
        help="measure the MRC file, an OME-Zarr copy of it, or both",
    )
    p.add_argument("--zarr-chunks", type=int, default=64, help="OME-Zarr chunk edge (voxels)")
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
    zarr_path = folder / "big_tomogram.zarr"
    results = []
    try:
        t0 = time.perf_counter()
        write_tomogram(path, shape, voxel_size=10.0, seed=args.seed)
        write_s = time.perf_counter() - t0
        print(f"tomogram {shape} float32, {_dir_size_mb(path):.0f} MiB written in {write_s:.1f} s")
        targets = []
        if args.format in ("mrc", "both"):
            targets.append(path)
        if args.format in ("zarr", "both"):
            t0 = time.perf_counter()
            write_ome_zarr_copy(path, zarr_path, args.zarr_chunks, voxel_size=10.0)
            print(
                f"OME-Zarr copy ({args.zarr_chunks}^3 chunks, 2 levels): "
                f"{_dir_size_mb(zarr_path):.0f} MiB on disk, written in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            targets.append(zarr_path)
        for target in targets:
            cmd = [sys.executable, __file__, "--worker", str(target)]
            for key in ("particles", "box", "binning", "batch", "seed"):
                cmd += [f"--{key}", str(getattr(args, key))]
            if args.pick:
                cmd += ["--pick", "--pick-diameter", str(args.pick_diameter)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    # The array's size (float32 voxels) is what both formats are compared with.
    size_mb = float(np.prod(shape)) * 4 / 1024**2
    print(f"array {size_mb:.0f} MiB (float32); {machine()}")
    for res in results:
        print(json.dumps(res, indent=1))
    print()
    print(
        "| format | array MiB | tomogram ZYX | boxes | box | binning | subtomograms/s | "
        "peak RSS MiB | peak anon MiB | RSS / array |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        print(
            f"| {res['format']} | {size_mb:.0f} | {'x'.join(map(str, shape))} | "
            f"{res['particles']} | {args.box} | {args.binning} | {res['per_second']:.0f} | "
            f"{res['peak_rss_mb']:.0f} | {res['peak_anon_mb']:.0f} | "
            f"{res['peak_rss_mb'] / size_mb:.2f} |"
        )
    if args.pick:
        print()
        for res in results:
            print(
                f"{res['format']} picking (d={args.pick_diameter:g} px): "
                f"{res['pick_seconds']:.1f} s, {res['pick_mvoxels_per_second']:.1f} Mvoxel/s, "
                f"{res['picks']} picks, peak RSS {res['peak_rss_after_pick_mb']:.0f} MiB "
                f"({res['peak_rss_after_pick_mb'] / size_mb:.2f} x the array)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
