"""Inference throughput: end to end from a memory-mapped tomogram vs the model alone.

Measures, in one run on the same device:
  * model-only subtomograms/s on in-memory tensors already on the device,
  * end-to-end subtomograms/s of `predict` on a SubtomogramSet backed by a tomogram
    MRC on disk (extraction + normalisation + transfer + model),
  * their ratio (target >= 90 %: data loading hidden behind compute),
  * the model's FLOPs per subtomogram and the achieved FLOP/s,
  * the extrapolated time to classify 1 M subtomograms.

    python benchmarks/bench_inference.py --preset rb3d-small --box 32 --n 512
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.io import make_particle_table, open_tomogram, write_mrc
    from napari_cryossl.nn.devices import (
        amp_dtype,
        autocast,
        describe,
        memory_format,
        select_device,
        to_device,
    )
    from napari_cryossl.nn.models import Classifier, build_encoder, count_flops, for_inference
    from napari_cryossl.particles.dataset import SubtomogramSet

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="rb3d-small")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--n", type=int, default=512, help="subtomograms")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    device = select_device(args.device)
    torch.manual_seed(0)
    model = Classifier(build_encoder(args.preset, args.box), n_classes=10).to(device).eval()
    flops = count_flops(model, args.box)

    # model alone, in-memory tensors on the device, run as `predict` runs it (Conv+BN
    # fused, the device's layout and autocast dtype)
    dtype = amp_dtype(device)
    fast = for_inference(model, dtype).to(device, memory_format=memory_format(device))
    x = to_device(torch.randn(args.batch_size, 1, args.box, args.box, args.box), device)
    with torch.inference_mode(), autocast(device, dtype):
        fast(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        n_batches = max(1, args.n // args.batch_size)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            fast(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_rate = n_batches * args.batch_size / (time.perf_counter() - t0)

    # end to end from a tomogram on disk
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        side = int(np.ceil(np.cbrt(args.n))) + 1
        spacing = args.box
        shape = (side * spacing,) * 3
        vol = rng.standard_normal(shape, dtype=np.float32)
        path = Path(tmp) / "tomo.mrc"
        write_mrc(path, vol, 10.0)
        del vol
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        centres = (grid[: args.n] * spacing + spacing // 2).astype(float)
        table = make_particle_table(centres, source="imported")
        data = SubtomogramSet.from_table(table, open_tomogram(path), args.box)
        predict(
            model,
            data.subset(np.arange(min(len(data), args.batch_size))),
            batch_size=args.batch_size,
            device=device,
        )
        t0 = time.perf_counter()
        predict(model, data, batch_size=args.batch_size, device=device, num_workers=args.workers)
        e2e_rate = len(data) / (time.perf_counter() - t0)

    ratio = e2e_rate / model_rate
    print(f"device: {describe()} ({platform.processor() or platform.machine()})")
    print(
        f"preset {args.preset}, box {args.box}^3, batch {args.batch_size}, n {args.n}, "
        f"{str(dtype or 'float32').removeprefix('torch.')}, {memory_format(device)}"
    )
    print(f"FLOPs per subtomogram: {flops / 1e9:.2f} GFLOP")
    print(
        f"model alone: {model_rate:.1f} subtomograms/s ({model_rate * flops / 1e12:.3f} TFLOP/s achieved)"
    )
    print(f"end to end from mmap'd tomogram: {e2e_rate:.1f} subtomograms/s")
    print(f"ratio end-to-end / model-only: {ratio:.1%}")
    print(f"1 M subtomograms: {1e6 / e2e_rate / 3600:.2f} h end to end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
