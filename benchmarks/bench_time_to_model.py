"""Time to first model: from 20 labelled particles per class (10 classes) to a classifier.

What a person waits for after clicking the labels: fine-tuning (default settings: SGD,
cosine decay, lr 5e-4, batch 16, 50 epochs, best validation epoch kept) from an encoder,
plus prediction of every particle in the set. Reports wall time per stage.

    python benchmarks/bench_time_to_model.py --preset rb3d-small --epochs 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.nn.devices import describe, select_device
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import SimulationConfig, simulate_subtomograms
    from napari_cryossl.train import FinetuneConfig, iter_finetune, run

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="rb3d-small")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--labels-per-class", type=int, default=20)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--particles", type=int, default=2000, help="particles to predict afterwards"
    )
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    cfg = SimulationConfig(n_classes=args.classes, box_size=args.box, snr=0.05)
    volumes, labels = simulate_subtomograms(args.labels_per_class, cfg, seed=0)
    everything, _ = simulate_subtomograms(max(1, args.particles // args.classes), cfg, seed=1)
    labelled = SubtomogramSet.from_arrays(volumes, labels, voxel_size=cfg.voxel_size)
    unlabelled = SubtomogramSet.from_arrays(everything, None, voxel_size=cfg.voxel_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "classifier.pt"
        t0 = time.perf_counter()
        last = run(
            iter_finetune(
                labelled,
                FinetuneConfig(preset=args.preset, epochs=args.epochs, device=args.device),
                out,
            )
        )
        t1 = time.perf_counter()
        pred = predict(out, unlabelled, device=args.device)
        t2 = time.perf_counter()
    print(f"device: {describe(select_device(args.device))}")
    print(
        f"{args.labels_per_class} labels x {args.classes} classes, preset {args.preset}, box {args.box}^3, "
        f"{args.epochs} epochs"
    )
    print(
        f"  fine-tune: {t1 - t0:.1f} s (best validation accuracy {last.metrics.get('best_val_accuracy', float('nan')):.3f})"
    )
    print(f"  predict {len(pred.class_numbers)} particles: {t2 - t1:.1f} s")
    print(f"  time to first model (fine-tune + predict): {t2 - t0:.1f} s")
    print(f"  predicted class counts: {np.bincount(pred.class_numbers).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
