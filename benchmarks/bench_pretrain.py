"""Pretraining step anatomy: share of each step spent loading data and augmenting.

One pretraining step = load a batch of subtomograms (from a memory-mapped tomogram),
copy to the device, make two augmented views on the device, SSL forward + backward +
optimiser step. Each part is timed (with device synchronisation) over many steps in one
run; the target is data loading + augmentation <= 15 % of the step.

    python benchmarks/bench_pretrain.py --method moco --preset rb3d-small --box 32 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from napari_cryossl.io import open_tomogram, write_mrc
    from napari_cryossl.nn.augment import SubtomogramAugment
    from napari_cryossl.nn.devices import describe, select_device
    from napari_cryossl.nn.models import build_encoder
    from napari_cryossl.nn.ssl import SSL_DEFAULTS, build_ssl
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="moco", choices=["moco", "simclr", "swav"])
    parser.add_argument("--preset", default="rb3d-small")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    device = select_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SimulationConfig(n_classes=4, box_size=args.box, snr=0.05)
        vol, truth = simulate_tomogram((64, 256, 256), 120, cfg, seed=0)
        path = Path(tmp) / "tomo.mrc"
        write_mrc(path, vol, cfg.voxel_size)
        data = SubtomogramSet.from_table(truth, open_tomogram(path), args.box)
        model = build_ssl(args.method, build_encoder(args.preset, args.box)).to(device)
        defaults = SSL_DEFAULTS[args.method]
        opt = torch.optim.Adam(
            model.parameters(), lr=defaults["lr"], weight_decay=defaults["weight_decay"]
        )
        augment = SubtomogramAugment().to(device)
        rng = np.random.default_rng(0)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times = {"load": 0.0, "augment": 0.0, "compute": 0.0}
        for step in range(args.steps + 2):
            t0 = time.perf_counter()
            idx = np.sort(rng.choice(len(data), size=args.batch_size, replace=False))
            batch = torch.from_numpy(data.load(idx)).unsqueeze(1)
            if device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            sync()
            t1 = time.perf_counter()
            v1, v2 = augment(batch), augment(batch)
            sync()
            t2 = time.perf_counter()
            loss = model(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_optimizer_step(step / args.steps)
            sync()
            t3 = time.perf_counter()
            if step >= 2:  # skip warm-up
                times["load"] += t1 - t0
                times["augment"] += t2 - t1
                times["compute"] += t3 - t2
    total = sum(times.values())
    print(f"device: {describe()}")
    print(
        f"{args.method}, preset {args.preset}, box {args.box}^3, batch {args.batch_size}, {args.steps} steps"
    )
    for key, value in times.items():
        print(f"  {key:<8} {1000 * value / args.steps:8.1f} ms/step  {value / total:6.1%}")
    print(
        f"  data loading + augmentation: {(times['load'] + times['augment']) / total:.1%} of each step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
