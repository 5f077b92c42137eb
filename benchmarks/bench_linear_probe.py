"""Does MoCo pretraining teach the encoder about the classes? Linear probe vs pretraining steps.

The set-up of the engine's "learning is real" test, measured over the whole run and
several seeds: the paper's MoCo (queue 128, m = 0.999, tau = 0.2, Adam lr 1e-4, batch 16)
on unlabelled, randomly oriented, noise-free simulated shapes of 3 classes (no CTF, no
missing wedge, no neighbours), rb3d-small at 16^3. After every few epochs the encoder is
frozen and a linear probe (``napari_cryossl.nn.probe.linear_probe``: logistic regression on
standardised embeddings, 16 labels per class) is scored on 30 held-out particles per
class. Epoch 0 is the random encoder pretraining starts from.

    python benchmarks/bench_linear_probe.py --seeds 0 1 2 --epochs 30 --out benchmarks/out/probe

``--data paper`` uses the reduced paper experiment's data instead (reproduce_paper.py:
10 classes x 500, crowded, wedge, CTF, 16^3 at 20 Å, at ``--snr``, the same simulation
seed and 60:20:20 split): pretraining on the 3,000 training subtomograms without labels,
the probe on ``--label-fraction`` of their labels, scored on the 1,000 test subtomograms.
``--method``, ``--queue`` and ``--temperature`` vary the pretraining.

Writes probe.json and probe.png (mean ± std over seeds) to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

METHOD_NAMES = {"moco": "MoCo", "simclr": "SimCLR", "swav": "SwAV"}


def shapes(n_per_class: int, seed: int, box: int):
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import clean_shapes_config, simulate_subtomograms

    config = clean_shapes_config(n_classes=3, box_size=box)
    volumes, labels = simulate_subtomograms(n_per_class, config, seed=seed)
    return SubtomogramSet.from_arrays(volumes, labels, voxel_size=20.0)


def paper_data(args):
    """(unlabelled train, labelled train, test) of the reduced paper experiment at --snr."""
    import sys
    from dataclasses import replace

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reproduce_paper import CONFIGS, experiment_data, label_subset

    cfg = CONFIGS["reduced"]
    # The synthetic shapes: the data of every probe curve in docs/benchmarks.md.
    cfg = replace(cfg, box_size=args.box, per_class=args.per_class or cfg.per_class, data="shapes")
    data, unlabelled, train_idx, _, test_idx = experiment_data(cfg, args.snr, seed=0)
    chosen = label_subset(train_idx, np.asarray(data.class_numbers), args.label_fraction, seed=0)
    return unlabelled, data.subset(chosen), data.subset(test_idx)


def _snr(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else float(text)


def augment_options(pairs: list[str] | None) -> dict | None:
    """["crop_p=1", "affine_p=1"] -> SubtomogramAugment arguments (None: the paper's)."""
    if not pairs:
        return None
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            raise SystemExit(f"--augment {pair!r}: expected NAME=VALUE, e.g. affine_p=1")
        try:
            options[key] = float(value)
        except ValueError:  # e.g. rotation=so3
            options[key] = value
    return options


def run_seed(seed: int, args, data=None) -> dict:
    import torch

    from napari_cryossl.nn.checkpoints import encoder_from_checkpoint, load_checkpoint
    from napari_cryossl.nn.models import build_encoder
    from napari_cryossl.nn.probe import linear_probe
    from napari_cryossl.train import PretrainConfig, iter_pretrain

    if data is not None:
        unlabelled, labelled, test = data
    else:
        unlabelled = shapes(args.unlabelled_per_class, 10 + seed, args.box)
        labelled = shapes(16, seed, args.box)
        test = shapes(30, 100 + seed, args.box)
    ssl_options = {
        key: value
        for key, value in (
            ("momentum", args.momentum),
            ("queue_size", args.queue),
            ("temperature", args.temperature),
        )
        if value is not None
    }
    config = PretrainConfig(
        method=args.method,
        preset="rb3d-small",
        epochs=args.epochs,
        batch_size=16,
        lr=args.lr,
        device=args.device,
        seed=seed,
        ssl_options=ssl_options or None,
        augment=augment_options(args.augment),
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


def baselines(data, args) -> dict:
    """Floor (radial features + logistic regression on the probe's labels) and, for the
    paper data, the template-matching ceiling, on the probe's test particles."""
    from napari_cryossl.analysis.baselines import floor_accuracy

    _unlabelled, labelled, test = data
    lab = labelled.load(np.arange(len(labelled)))
    tst = test.load(np.arange(len(test)))
    out = {"floor": floor_accuracy(lab, labelled.class_numbers, tst, test.class_numbers)}
    if args.data == "paper" and args.ceiling_rotations > 0:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from dataclasses import replace

        from reproduce_paper import CONFIGS, simulation_config

        from napari_cryossl.analysis.baselines import simulated_ceiling

        cfg = replace(CONFIGS["reduced"], box_size=args.box, data="shapes")
        raw = test.load(np.arange(len(test)))
        result = simulated_ceiling(
            raw, simulation_config(cfg, args.snr), n_rotations=args.ceiling_rotations
        )
        out["ceiling"] = float((result.class_numbers == test.class_numbers).mean())
    return out


def plot(
    rows: list[dict], path: Path, n_classes: int = 3, method: str = "moco", lines=None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted({int(e) for r in rows for e in r["probe"]})
    acc = np.array([[r["probe"][str(e)] for e in epochs] for r in rows])
    steps = np.array(epochs) * rows[0]["steps_per_epoch"]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.errorbar(steps, 100 * acc.mean(0), yerr=100 * acc.std(0), marker="o", capsize=3)
    ax.axhline(100 * acc[:, 0].mean(), color="grey", ls="--", lw=1, label="random encoder")
    ax.axhline(100 / n_classes, color="k", ls=":", lw=1, label="chance")
    colours = {"floor": "tab:red", "ceiling": "tab:green"}
    for name, value in (lines or {}).items():
        ax.axhline(100 * value, color=colours.get(name, "k"), ls="-.", lw=1, label=name)
    ax.set_xlabel(f"{METHOD_NAMES.get(method, method)} optimiser steps")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.set_title(f"Linear probe on the pretrained encoder ({len(rows)} seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def overlay(folders: list[Path], labels: list[str], path: Path) -> None:
    """One plot of the probe curves (mean over seeds) of several finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=120)
    n_classes = 3
    for folder, label in zip(folders, labels, strict=True):
        record = json.loads((Path(folder) / "probe.json").read_text())
        rows = record["runs"]
        epochs = sorted({int(e) for r in rows for e in r["probe"]})
        acc = np.array([[r["probe"][str(e)] for e in epochs] for r in rows]).mean(0)
        ax.plot(np.array(epochs) * rows[0]["steps_per_epoch"], 100 * acc, marker="o", label=label)
        if record["settings"].get("data") == "paper":
            n_classes = 10
    ax.axhline(100 / n_classes, color="k", ls=":", lw=1, label="chance")
    ax.set_xlabel("pretraining optimiser steps")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.legend(fontsize=7)
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
    parser.add_argument("--lr", type=float, default=None, help="pretraining lr (default: the method's)")
    parser.add_argument("--method", choices=sorted(METHOD_NAMES), default="moco")
    parser.add_argument("--queue", type=int, default=None, help="MoCo queue (default 128)")
    parser.add_argument("--temperature", type=float, default=None, help="default: the method's")
    parser.add_argument(
        "--augment",
        nargs="+",
        default=None,
        metavar="NAME=VALUE",
        help="SubtomogramAugment arguments for pretraining, e.g. crop_p=1 affine_p=1 "
        "(default: the paper's)",
    )
    parser.add_argument(
        "--data",
        choices=("shapes", "paper"),
        default="shapes",
        help="noise-free 3-class shapes, or the reduced paper experiment's data",
    )
    parser.add_argument(
        "--snr", type=_snr, default=0.5, help="--data paper: SNR ('none': noise-free)"
    )
    parser.add_argument(
        "--label-fraction", type=float, default=1.0, help="--data paper: labels for the probe"
    )
    parser.add_argument(
        "--per-class", type=int, default=None, help="--data paper: subtomograms per class (500)"
    )
    parser.add_argument(
        "--ceiling-rotations",
        type=int,
        default=300,
        help="--data paper: rotations of the template-matching ceiling (0: skip it)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/probe"))
    parser.add_argument(
        "--overlay",
        nargs="+",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="only plot the curves of these finished runs into --out/overlay.png",
    )
    parser.add_argument("--labels", nargs="+", default=None, help="--overlay: curve names")
    args = parser.parse_args(argv)
    if args.overlay:
        args.out.mkdir(parents=True, exist_ok=True)
        overlay(
            args.overlay, args.labels or [f.name for f in args.overlay], args.out / "overlay.png"
        )
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = paper_data(args) if args.data == "paper" else None
    n_classes = len(np.unique(data[1].class_numbers)) if data else 3
    rows = [run_seed(s, args, data) for s in args.seeds]
    rows = json.loads(json.dumps(rows))  # epoch keys as strings, as read back from the file
    lines = baselines(data, args) if data is not None else {}
    for name, value in lines.items():
        print(f"{name}: {value:.3f}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": settings,
        "runs": rows,
        "baselines": lines,
    }
    (args.out / "probe.json").write_text(json.dumps(record, indent=2))
    plot(rows, args.out / "probe.png", n_classes, args.method, lines)
    epochs = sorted({int(e) for r in rows for e in r["probe"]})
    name = METHOD_NAMES[args.method]
    print(f"| epoch | {name} steps | probe accuracy (mean ± std over seeds) |")
    print("|---|---|---|")
    for e in epochs:
        a = np.array([r["probe"][str(e)] for r in rows])
        print(f"| {e} | {e * rows[0]['steps_per_epoch']} | {a.mean():.3f} ± {a.std():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
