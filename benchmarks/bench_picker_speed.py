"""Pick by example, speed: the learned picker's dense inference against TomoTwin-style
sliding-window embedding of the same tomogram, in one run on the same machine (issue 27).

    python benchmarks/bench_picker_speed.py                        # 200 x 512 x 512, 1 thread
    python benchmarks/bench_picker_speed.py --shape 64 128 128 --windows 8   # a quick look

(a) **Dense picker**: `learned_picker.iter_pick_with_model` (what `cryossl pick --model`
runs) over the whole tomogram, read from a memory-mapped MRC, with a checkpoint of the
default `PickerConfig` channels trained for a few steps (``--train-steps``, not timed) on
the simulated tomogram's own particles: wall time per tomogram and voxels/s.

(b) **Sliding-window embedding as TomoTwin does it**: TomoTwin's network (`TomoTwinNet`
below, rewritten from the published architecture of ``SiameseNet3D``, GroupNorm with 64
groups, 32-D output; 77.6 M parameters like the original) embeds a 37³ box around every
position on a grid of stride 2 (TomoTwin's tutorial: ``tomotwin_embed.py tomogram ... -b
256 -s 2``; boxes wholly inside the tomogram, as ``numpy``'s ``sliding_window_view`` with
``[::2, ::2, ::2]`` gives them). Embedding all of them (4.6 M boxes for 200 x 512 x 512)
would take days on a CPU, so a fixed number of boxes (``--windows``, in batches of
``--batch``, after one warm-up batch) is timed and the total extrapolated: boxes/s and
the whole tomogram's time. The ratio is (b) / (a).

Both run with ``torch.set_num_threads(--threads)`` (default 1, as the other benchmarks:
on a shared 2-core machine one thread is fastest), float32, no gradients. `measure`
takes a ``device`` (benchmarks/gpu_check.py runs it on CUDA); on a GPU the dense part is
the picker network over the same chunks on the device (``iter_pick_with_model`` itself
runs on the CPU), and the CPU path is timed beside it when ``cpu_path`` is set.

Results: ``benchmarks/results/picker_speed_<date>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: TomoTwin's box edge (voxels) and the stride its tutorial embeds tomograms with.
TOMOTWIN_BOX = 37
TOMOTWIN_STRIDE = 2
#: TomoTwin's embedding size and GroupNorm groups (its general model).
TOMOTWIN_DIM = 32
TOMOTWIN_GROUPS = 64


# ------------------------------------------------------------------------------ TomoTwin


def tomotwin_net(output_channels: int = TOMOTWIN_DIM, groups: int = TOMOTWIN_GROUPS):
    """TomoTwin's embedding network (``SiameseNet3D``), rewritten from its description:

    the 37³ box is zero-padded to 40³ (1 voxel before, 2 after on each axis); five stages
    of two unpadded 3³ convolutions (1→64, 64→128, 128→256, 256→512, 512→1024 channels),
    each convolution followed by a GroupNorm (one norm module per stage, used after both
    of its convolutions, as in the original) and a LeakyReLU, with a 2³ max-pooling after
    the first stage only (40 → 36 → 18 → 14 → 10 → 6 → 2 voxels); an adaptive average
    pooling to 2³; a head of dropout and three linear layers (8192 → 2048 → 2048 → 32,
    LeakyReLU between); the output L2-normalised.
    """
    import torch
    from torch import nn

    class Stage(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv1 = nn.Conv3d(cin, cout, 3)
            self.conv2 = nn.Conv3d(cout, cout, 3)
            self.norm = nn.GroupNorm(groups, cout)
            self.act = nn.LeakyReLU()

        def forward(self, x):
            x = self.act(self.norm(self.conv1(x)))
            return self.act(self.norm(self.conv2(x)))

    class TomoTwinNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = (1, 64, 128, 256, 512, 1024)
            self.stages = nn.ModuleList(Stage(a, b) for a, b in itertools.pairwise(widths))
            self.pool = nn.MaxPool3d(2)
            self.squeeze = nn.AdaptiveAvgPool3d(2)
            self.head = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(8 * 1024, 2048),
                nn.LeakyReLU(),
                nn.Linear(2048, 2048),
                nn.LeakyReLU(),
                nn.Linear(2048, output_channels),
            )

        def forward(self, x):
            x = nn.functional.pad(x, (1, 2, 1, 2, 1, 2))
            for i, stage in enumerate(self.stages):
                x = stage(x)
                if i == 0:
                    x = self.pool(x)
            x = self.head(torch.flatten(self.squeeze(x), 1))
            return nn.functional.normalize(x, dim=1)

    return TomoTwinNet()


def sliding_window_count(shape, box: int = TOMOTWIN_BOX, stride: int = TOMOTWIN_STRIDE) -> int:
    """Boxes of edge ``box`` wholly inside ``shape`` at every ``stride``-th position."""
    return math.prod(max(0, math.ceil((n - box + 1) / stride)) for n in shape)


def time_sliding_window(volume, *, n_windows: int, batch: int, device="cpu") -> dict:
    """Embed the first ``n_windows`` boxes of the sliding window (raster order) with
    TomoTwin's network in batches of ``batch`` after one warm-up batch: boxes/s, and the
    time the whole tomogram's boxes would take at that pace."""
    import torch

    device = torch.device(device)
    torch.manual_seed(0)
    net = tomotwin_net().to(device).eval()
    windows = np.lib.stride_tricks.sliding_window_view(volume, (TOMOTWIN_BOX,) * 3)[
        ::TOMOTWIN_STRIDE, ::TOMOTWIN_STRIDE, ::TOMOTWIN_STRIDE
    ]
    grid = windows.shape[:3]
    total = math.prod(grid)
    if total != sliding_window_count(volume.shape):
        raise AssertionError("sliding-window count disagrees with sliding_window_count")

    def boxes(start: int) -> torch.Tensor:
        idx = np.unravel_index(np.arange(start, start + batch) % total, grid)
        b = np.ascontiguousarray(windows[idx], dtype=np.float32)  # (batch, 37, 37, 37)
        b -= b.mean(axis=(1, 2, 3), keepdims=True)  # each box to mean 0, σ 1
        b /= b.std(axis=(1, 2, 3), keepdims=True) + 1e-6
        return torch.from_numpy(b)[:, None].to(device, non_blocking=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n_batches = max(1, math.ceil(n_windows / batch))
    with torch.inference_mode():
        net(boxes(0))  # warm-up: allocation, kernel choice
        sync()
        t0 = time.perf_counter()
        for i in range(n_batches):
            out = net(boxes((i + 1) * batch))
        sync()
        seconds = time.perf_counter() - t0
    timed = n_batches * batch
    rate = timed / seconds
    return {
        "box": TOMOTWIN_BOX,
        "stride": TOMOTWIN_STRIDE,
        "batch": batch,
        "windows_timed": timed,
        "seconds_timed": seconds,
        "windows_per_s": rate,
        "windows_total": total,
        "extrapolated_total_s": total / rate,
        "embedding_dim": int(out.shape[1]),
        "parameters": sum(p.numel() for p in net.parameters()),
        "device": str(device),
    }


# ------------------------------------------------------------------------------ dense picker


def train_checkpoint(volume, table, out: Path, *, steps: int, voxel_size: float) -> dict:
    """A picker of the default `PickerConfig` channels, trained ``steps`` steps on the
    tomogram's own particles (what is timed is picking, not this)."""
    from dataclasses import replace

    from napari_cryossl.ops import run
    from napari_cryossl.particles.learned_picker import PickerConfig, iter_train_picker

    config = replace(PickerConfig(), steps=int(steps))
    t0 = time.perf_counter()
    run(iter_train_picker(
        [(volume, table)], diameter_px=None, config=config, out=out, voxel_size=voxel_size,
    ))
    return {"train_steps": steps, "train_s": time.perf_counter() - t0,
            "channels": list(config.channels), "patch_size": config.patch_size}


def time_dense_cpu(tomogram, checkpoint: Path) -> dict:
    """`iter_pick_with_model` over the whole tomogram (as `cryossl pick --model`)."""
    from napari_cryossl.ops import run
    from napari_cryossl.particles.learned_picker import iter_pick_with_model

    chunks = []
    t0 = time.perf_counter()
    table = run(iter_pick_with_model(tomogram, checkpoint), chunks.append)
    seconds = time.perf_counter() - t0
    voxels = math.prod(tomogram.shape)
    return {
        "path": "learned_picker.iter_pick_with_model (CPU)",
        "seconds": seconds,
        "voxels_per_s": voxels / seconds,
        "chunks": chunks[-1].n_steps if chunks else 0,
        "picks": len(table),
    }


def time_dense_on_device(volume, checkpoint: Path, device, chunk_size: int = 64) -> dict:
    """The picker network over the chunks `iter_pick_with_model` uses (same halo), on
    ``device``: normalise, forward, sigmoid, peaks by a max-pool on the device; what a
    GPU path of the picker would do. Returns its time over the whole tomogram."""
    import torch
    import torch.nn.functional as F

    from napari_cryossl.particles.learned_picker import (
        DEFAULT_THRESHOLD,
        LOGIT_OFFSET,
        MIN_DISTANCE_FRACTION,
        _normalisation,
        load_picker,
    )

    device = torch.device(device)
    net, meta = load_picker(checkpoint)
    net = net.to(device)
    diameter = float(meta["diameter_px"])
    depth = 2 ** (len(meta["channels"]) - 1)
    halo = int(math.ceil(max(meta["patch_size"] / 4, diameter) / depth)) * depth
    window = 2 * max(1, int(MIN_DISTANCE_FRACTION * diameter // 2)) + 1
    norm = _normalisation(volume, "benchmark")
    shape = volume.shape

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_pass() -> int:
        found = 0
        for z0 in range(0, shape[0], chunk_size):
            for y0 in range(0, shape[1], chunk_size):
                for x0 in range(0, shape[2], chunk_size):
                    core = [(s, min(s + chunk_size, n)) for s, n in zip((z0, y0, x0), shape, strict=True)]
                    outer = [(max(a - halo, 0), min(b + halo, n)) for (a, b), n in zip(core, shape, strict=True)]
                    block = np.asarray(volume[tuple(slice(a, b) for a, b in outer)], np.float32)
                    block = (block - norm[0]) / norm[1]
                    pad = [(0, -(-s // depth) * depth - s) for s in block.shape]
                    block = np.pad(block, pad, mode="reflect")
                    x = torch.from_numpy(block)[None, None].to(device, non_blocking=True)
                    heat = torch.sigmoid(net(x) + LOGIT_OFFSET)
                    peaks = (heat == F.max_pool3d(heat, window, 1, window // 2)) & (
                        heat >= DEFAULT_THRESHOLD
                    )
                    found += int(peaks.sum())
        sync()
        return found

    with torch.inference_mode():
        side = min(chunk_size + 2 * halo, *shape) // depth * depth
        net(torch.zeros((1, 1, side, side, side), device=device))  # warm-up (kernel choice)
        sync()
        t0 = time.perf_counter()
        peaks = one_pass()
        seconds = time.perf_counter() - t0
    voxels = math.prod(shape)
    return {
        "path": f"picker network over the same chunks on {device} (benchmark loop)",
        "seconds": seconds,
        "voxels_per_s": voxels / seconds,
        "peaks_before_min_distance": peaks,
    }


# ------------------------------------------------------------------------------ the run


def simulated_tomogram(shape, *, seed: int = 0, particles: int | None = None):
    """A crowded simulated tomogram (two synthetic classes, 120 Å at 10 Å per voxel,
    SNR 0.5, default clutter) and its particles."""
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    n = particles or max(20, int(math.prod(shape) / 64**3 * 2))
    config = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=10.0, snr=0.5, particle_diameter_a=120.0
    )
    return simulate_tomogram(tuple(shape), n, config, seed=seed)


def measure(
    shape=(200, 512, 512),
    *,
    device="cpu",
    threads: int | None = 1,
    windows: int = 16,
    batch: int = 8,
    train_steps: int = 20,
    cpu_path: bool = True,
    device_path: bool | None = None,
    work: Path | None = None,
    log=print,
) -> dict:
    """Both measurements on one simulated tomogram of ``shape``; see the module doc.

    ``cpu_path``: time `iter_pick_with_model` (on the CPU) also when ``device`` is a GPU;
    ``device_path``: time the picker network over the chunks on ``device`` (default: when
    it is not the CPU; True on the CPU tries that path, as the GPU check's dry run does).
    """
    import torch

    from napari_cryossl.io import open_tomogram, write_mrc

    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(device)
    t0 = time.perf_counter()
    volume, table = simulated_tomogram(shape)
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    log(f"simulated {'x'.join(map(str, shape))} with {len(table)} particles in "
        f"{time.perf_counter() - t0:.0f} s")
    out: dict = {"shape_zyx": list(shape), "voxels": int(math.prod(shape)),
                 "threads": torch.get_num_threads(), "device_used": str(device)}
    with tempfile.TemporaryDirectory(prefix="picker_speed_", dir=work) as tmp:
        tmp = Path(tmp)
        mrc = tmp / "tomogram.mrc"
        write_mrc(mrc, volume, 10.0)
        checkpoint = tmp / "picker.pt"
        out["checkpoint"] = train_checkpoint(
            volume, table, checkpoint, steps=train_steps, voxel_size=10.0
        )
        log(f"picker trained {train_steps} steps in {out['checkpoint']['train_s']:.0f} s "
            "(not timed below)")
        dense = []
        if device.type == "cpu" or cpu_path:
            row = time_dense_cpu(open_tomogram(mrc), checkpoint)
            dense.append(row)
            log(f"dense picker ({row['path']}): {row['seconds']:.1f} s, "
                f"{row['voxels_per_s'] / 1e6:.2f} M voxels/s, {row['picks']} picks")
        if device_path if device_path is not None else device.type != "cpu":
            row = time_dense_on_device(volume, checkpoint, device)
            dense.append(row)
            log(f"dense picker ({row['path']}): {row['seconds']:.1f} s, "
                f"{row['voxels_per_s'] / 1e6:.2f} M voxels/s")
        out["dense"] = dense
    sw = time_sliding_window(volume, n_windows=windows, batch=batch, device=device)
    out["sliding_window"] = sw
    log(f"sliding window (TomoTwin net, box {sw['box']}, stride {sw['stride']}): "
        f"{sw['windows_per_s']:.2f} boxes/s over {sw['windows_timed']} boxes; "
        f"{sw['windows_total']:,} boxes -> {sw['extrapolated_total_s'] / 3600:.1f} h")
    fastest = min(dense, key=lambda r: r["seconds"])
    out["ratio_sliding_over_dense"] = sw["extrapolated_total_s"] / fastest["seconds"]
    out["ratio_against"] = fastest["path"]
    log(f"ratio (sliding-window total / dense picker): {out['ratio_sliding_over_dense']:,.0f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    p.add_argument("--windows", type=int, default=16, help="sliding-window boxes timed")
    p.add_argument("--batch", type=int, default=8, help="sliding-window batch")
    p.add_argument("--train-steps", type=int, default=20,
                   help="steps of the picker's checkpoint (not timed)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON to write (default benchmarks/results/picker_speed_<date>.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_picking import _device_line

    info = _device_line()
    import torch

    info["torch"] = torch.__version__
    info["command"] = "python benchmarks/bench_picker_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(f"{info['device']}; {info['date']}; load {info['load_average_at_start']}", flush=True)
    result = {**info, **measure(
        tuple(args.shape), threads=args.threads, windows=args.windows, batch=args.batch,
        train_steps=args.train_steps, log=lambda s: print(s, flush=True),
    )}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = args.out or RESULTS / f"picker_speed_{time.strftime('%Y%m%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
