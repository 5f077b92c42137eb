"""Which self-supervised method pays off on real complexes? Linear probe after each, same budget.

The built-in complexes of ``reproduce_paper.py`` (``--data structures``: ten real complexes,
crowded, CTF, ±60° wedge, shifts ≤ 30 Å) at **32³ boxes of 10 Å** (the paper's geometry) and
``--snr`` (0.1), ``--per-class`` of each, split 60:20:20 as every benchmark here. Each method
pretrains rb3d-small on the training split **without labels**, for the same number of
epochs (= optimiser steps: batch 16 for every method), with the default recipe's views
(``PRETRAIN_ROTATION_AUGMENT``; ``--augment NAME=VALUE`` changes some of them). After every
``--every`` epochs the encoder is frozen and a linear probe (``nn.probe.linear_probe``) is
fitted on ``--label-fraction`` of the training labels and scored on the test split, beside

- random weights (the encoder pretraining starts from, same seed);
- the floor: rotation-invariant radial features + logistic regression on the same labels
  (``analysis.baselines.floor_accuracy``);
- the ceiling: template matching with the simulator's true templates on the same test
  particles (``analysis.baselines.simulated_ceiling``, cached in ``--out``).

Also recorded: ``ssl.embedding_std`` of the test embeddings (L2-normalised, std over
particles, mean over dimensions; ~1/sqrt(256) = 0.0625 for spread directions, 0 = collapse)
and the pretraining loss per epoch.

    python benchmarks/bench_ssl_methods.py --methods moco simsiam byol --seeds 0 1 \\
        --epochs 20 --every 5 --threads 1
    python benchmarks/bench_ssl_methods.py --methods moco --name moco_wedge \\
        --augment wedge_deg=60 --seeds 0            # a variant of the views
    python benchmarks/bench_ssl_methods.py --table  # the table of everything in --out

Each (name, seed) appends one JSON line to ``--out/runs.jsonl``; ``--table`` summarises
them (mean ± std over seeds at the last epoch, Welch p against MoCo) and writes
``--json`` (e.g. benchmarks/results/ssl_methods_<date>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def data_sets(args):
    """(unlabelled training split, probe labels, probe labels (all), test, sim config)."""
    from reproduce_paper import CONFIGS, experiment_data, label_subset, simulation_config

    cfg = replace(CONFIGS["quick"], per_class=args.per_class, snrs=(args.snr,), data="structures")
    all_data, unlabelled, train_idx, _val_idx, test_idx = experiment_data(cfg, args.snr, seed=0)
    labels = np.asarray(all_data.class_numbers)
    chosen = label_subset(train_idx, labels, args.label_fraction, seed=0)
    return (
        unlabelled,
        all_data.subset(chosen),
        all_data.subset(train_idx),
        all_data.subset(test_idx),
        simulation_config(cfg, args.snr),
    )


def baselines(args, labelled, labelled_all, test, sim) -> dict:
    """Floor (both label sets) and ceiling on the test particles, cached in --out."""
    from napari_cryossl.analysis.baselines import floor_accuracy, simulated_ceiling

    cache = args.out / "baselines.json"
    key = f"snr{args.snr}|pc{args.per_class}|lf{args.label_fraction}|rot{args.ceiling_rotations}"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key in known:
        return known[key]
    tst = test.load(np.arange(len(test)))
    out = {}
    for name, lab in (("floor", labelled), ("floor_all_labels", labelled_all)):
        out[name] = floor_accuracy(
            lab.load(np.arange(len(lab))), lab.class_numbers, tst, test.class_numbers
        )
    if args.ceiling_rotations > 0:
        t0 = time.perf_counter()
        result = simulated_ceiling(tst, sim, n_rotations=args.ceiling_rotations)
        out["ceiling"] = float((result.class_numbers == np.asarray(test.class_numbers)).mean())
        out["ceiling_rotations"] = args.ceiling_rotations
        out["ceiling_seconds"] = time.perf_counter() - t0
    known[key] = out
    cache.write_text(json.dumps(known, indent=2))
    return out


def probe_all(encoder, labelled, labelled_all, test) -> dict:
    import torch

    from napari_cryossl.nn.probe import embed, linear_probe
    from napari_cryossl.nn.ssl import embedding_std

    return {
        "probe": linear_probe(encoder, labelled, test).accuracy,
        "probe_all_labels": linear_probe(encoder, labelled_all, test).accuracy,
        "embedding_std": embedding_std(torch.from_numpy(embed(encoder, test))),
    }


def run(method: str, seed: int, args, sets) -> dict:
    import torch
    from bench_linear_probe import augment_options

    from napari_cryossl.nn.checkpoints import encoder_from_checkpoint, load_checkpoint
    from napari_cryossl.nn.models import build_encoder
    from napari_cryossl.train import PretrainConfig, iter_pretrain
    from napari_cryossl.train.config import PRETRAIN_ROTATION_AUGMENT

    unlabelled, labelled, labelled_all, test, _sim = sets
    torch.manual_seed(seed)
    curve = {0: probe_all(build_encoder("rb3d-small", args.box), labelled, labelled_all, test)}
    row = {"method": method, "seed": seed, "curve": curve, "loss": {}, "steps_per_epoch": 0}
    if method == "random":
        return row
    config = PretrainConfig(
        method=method,
        preset="rb3d-small",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=seed,
        ssl_options=json.loads(args.ssl_options) if args.ssl_options else None,
        # --augment changes the default recipe's views (e.g. wedge_deg=60), not the paper's
        augment={**PRETRAIN_ROTATION_AUGMENT, **(augment_options(args.augment) or {})},
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for status in iter_pretrain(unlabelled, config, Path(tmp) / "encoder.pt"):
            if status.event != "epoch":
                continue
            row["loss"][status.epoch] = status.loss
            row["steps_per_epoch"] = status.step // status.epoch
            if status.epoch % args.every == 0 or status.epoch == args.epochs:
                encoder = encoder_from_checkpoint(load_checkpoint(status.checkpoint))
                curve[status.epoch] = probe_all(encoder, labelled, labelled_all, test)
                c = curve[status.epoch]
                print(
                    f"{args.name or method} seed {seed} epoch {status.epoch} loss "
                    f"{status.loss:.3f}: probe {c['probe']:.3f} (all labels "
                    f"{c['probe_all_labels']:.3f}), std {c['embedding_std']:.4f}",
                    flush=True,
                )
    row["seconds"] = time.perf_counter() - t0
    return row


def _welch(a, b) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def table(args) -> int:
    rows = [json.loads(x) for x in (args.out / "runs.jsonl").read_text().splitlines() if x]
    base = json.loads((args.out / "baselines.json").read_text())
    names = list(dict.fromkeys(r["name"] for r in rows))
    last = {
        n: [r["curve"][max(r["curve"], key=int)] for r in rows if r["name"] == n] for n in names
    }
    summary = {}
    ref = [c["probe"] for c in last.get("moco", [])]
    print(
        "| start | seeds | steps | probe, 25 % labels | probe, all labels | embedding std | p vs MoCo |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in names:
        runs = [r for r in rows if r["name"] == n]
        acc = np.array([c["probe"] for c in last[n]])
        acc_all = np.array([c["probe_all_labels"] for c in last[n]])
        std = np.array([c["embedding_std"] for c in last[n]])
        steps = max(int(e) for e in runs[0]["curve"]) * runs[0]["steps_per_epoch"]
        p = _welch(acc.tolist(), ref) if n != "moco" else None
        summary[n] = {
            "seeds": [r["seed"] for r in runs],
            "steps": steps,
            "probe": acc.tolist(),
            "probe_mean": float(acc.mean()),
            "probe_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "probe_all_labels": acc_all.tolist(),
            "embedding_std": std.tolist(),
            "welch_p_vs_moco": p,
            "curves": {str(r["seed"]): r["curve"] for r in runs},
            "loss": {str(r["seed"]): r["loss"] for r in runs},
            "settings": runs[0]["settings"],
            "finished": [r.get("date") for r in runs],
            "load_average_at_end": [r.get("load") for r in runs],
            "pretrain_seconds": [r.get("seconds") for r in runs],
        }
        sd = f" ± {100 * acc.std(ddof=1):.1f}" if len(acc) > 1 else ""
        sd_all = f" ± {100 * acc_all.std(ddof=1):.1f}" if len(acc) > 1 else ""
        print(
            f"| {n} | {len(acc)} | {steps} | {100 * acc.mean():.1f}{sd} % | "
            f"{100 * acc_all.mean():.1f}{sd_all} % | {std.mean():.4f} | "
            f"{'' if p is None else f'{p:.2g}'} |"
        )
    for key, value in base.items():
        print(f"baselines {key}: {value}")
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "benchmark": "benchmarks/bench_ssl_methods.py",
            "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU",
            "torch": __import__("torch").__version__,
            "baselines": base,
            "results": summary,
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=["random", "moco", "simsiam", "byol"])
    p.add_argument("--name", default=None, help="row name (default: the method)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--ssl-options", default=None, help="JSON, e.g. '{\"queue_size\": 512}'")
    p.add_argument("--augment", nargs="+", default=None, metavar="NAME=VALUE")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--label-fraction", type=float, default=0.25)
    p.add_argument("--ceiling-rotations", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/ssl_methods"))
    p.add_argument("--table", action="store_true", help="summarise --out and exit")
    p.add_argument("--json", type=Path, default=None, help="--table: write the summary here")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        return table(args)
    import torch

    torch.set_num_threads(args.threads)
    sets = data_sets(args)
    lines = baselines(args, *sets[1:])
    print(f"baselines: {lines}", flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for method in args.methods:
        for seed in args.seeds:
            row = run(method, seed, args, sets)
            row.update(
                name=args.name or method,
                settings=settings,
                date=time.strftime("%Y-%m-%d %H:%M"),
                load=os.getloadavg(),
            )
            with open(args.out / "runs.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
