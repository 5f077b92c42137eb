"""Does MoCo pretraining teach the encoder about the classes? Linear probe vs pretraining steps.

The set-up of the engine's "learning is real" test, measured over the whole run and
several seeds: the paper's MoCo (queue 128, m = 0.999, tau = 0.2, Adam lr 1e-4, batch 16)
on unlabelled, randomly oriented, noise-free simulated shapes of 3 classes (no CTF, no
missing wedge, no neighbours), rb3d-small at 16^3. After every few epochs the encoder is
frozen and a linear probe (``napari_cryossl.probe.linear_probe``: logistic regression on
standardised embeddings, 16 labels per class) is scored on 30 held-out particles per
class. Epoch 0 is the random encoder pretraining starts from.

    python benchmarks/bench_linear_probe.py --seeds 0 1 2 --epochs 30 --out benchmarks/out/probe

Writes probe.json and probe.png (mean ± std over seeds) to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def shapes(n_per_class: int, seed: int, box: int):
    from napari_cryossl.dataset import SubtomogramSet
    from napari_cryossl.simulate import clean_shapes_config, simulate_subtomograms

    config = clean_shapes_config(n_classes=3, box_size=box)
    volumes, labels = simulate_subtomograms(n_per_class, config, seed=seed)
    return SubtomogramSet.from_arrays(volumes, labels, voxel_size=20.0)


def run_seed(seed: int, args) -> dict:
    import torch

    from napari_cryossl.models import build_encoder, encoder_from_checkpoint, load_checkpoint
    from napari_cryossl.probe import linear_probe
    from napari_cryossl.train import PretrainConfig, iter_pretrain

    unlabelled = shapes(args.unlabelled_per_class, 10 + seed, args.box)
    labelled = shapes(16, seed, args.box)
    test = shapes(30, 100 + seed, args.box)
    config = PretrainConfig(
        method="moco",
        preset="rb3d-small",
        epochs=args.epochs,
        batch_size=16,
        device=args.device,
        seed=seed,
        ssl_options={"momentum": args.momentum} if args.momentum else None,
    )
    torch.manual_seed(seed)
    curve = {0: linear_probe(build_encoder("rb3d-small", args.box), labelled, test).accuracy}
    losses = {}
    steps_per_epoch = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for status in iter_pretrain(unlabelled, config, Path(tmp) / "encoder.pt"):
            if status.event != "epoch":
                continue
            losses[status.epoch] = status.loss
            steps_per_epoch = status.step // status.epoch  # what the loop counted
            if status.epoch % args.every == 0 or status.epoch == args.epochs:
                encoder = encoder_from_checkpoint(load_checkpoint(status.checkpoint))
                curve[status.epoch] = linear_probe(encoder, labelled, test).accuracy
                print(f"seed {seed} epoch {status.epoch}: probe {curve[status.epoch]:.3f}")
    return {
        "seed": seed,
        "probe": curve,
        "loss": losses,
        "steps_per_epoch": steps_per_epoch,
        "seconds": time.perf_counter() - t0,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted({int(e) for r in rows for e in r["probe"]})
    acc = np.array([[r["probe"][str(e)] for e in epochs] for r in rows])
    steps = np.array(epochs) * rows[0]["steps_per_epoch"]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.errorbar(steps, 100 * acc.mean(0), yerr=100 * acc.std(0), marker="o", capsize=3)
    ax.axhline(100 * acc[:, 0].mean(), color="grey", ls="--", lw=1, label="random encoder")
    ax.axhline(100 / 3, color="k", ls=":", lw=1, label="chance")
    ax.set_xlabel("MoCo optimiser steps (paper settings)")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.set_title(f"Linear probe on the pretrained encoder ({len(rows)} seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5, help="probe every this many epochs")
    parser.add_argument("--unlabelled-per-class", type=int, default=100)
    parser.add_argument("--box", type=int, default=16)
    parser.add_argument("--momentum", type=float, default=None, help="MoCo m (default 0.999)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/probe"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_seed(s, args) for s in args.seeds]
    rows = json.loads(json.dumps(rows))  # epoch keys as strings, as read back from the file
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = {"date": time.strftime("%Y-%m-%d"), "settings": settings, "runs": rows}
    (args.out / "probe.json").write_text(json.dumps(record, indent=2))
    plot(rows, args.out / "probe.png")
    epochs = sorted({int(e) for r in rows for e in r["probe"]})
    print("| epoch | MoCo steps | probe accuracy (mean ± std over seeds) |")
    print("|---|---|---|")
    for e in epochs:
        a = np.array([r["probe"][str(e)] for r in rows])
        print(f"| {e} | {e * rows[0]['steps_per_epoch']} | {a.mean():.3f} ± {a.std():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
