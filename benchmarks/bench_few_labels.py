"""The few-label curve: accuracy at k labels per class, with and without the unlabelled particles.

Data: the "quick" configuration of ``reproduce_paper.py`` (its ``experiment_data``): the ten
built-in complexes x 60, crowded, CTF, ±60° wedge, 32³ boxes at 10 Å, SNR 0.1, a stratified
60:20:20 split (36 / 12 / 12 per class), the same simulation seed and split as every
"quick" row in docs/benchmarks.md (``--per-class`` and ``--snr`` make other sets of the same
kind: 100 per class gives 60 training particles per class, room for 50 labels). For every
label count k and seed:

- the fine-tuning set is the training and validation splits together (480 particles): the
  training split keeps its labels and ``label_fraction = k / 36`` draws k per class of them
  (``split_labelled``, the run's seed); every other particle (the rest of the training
  split, the validation split) is unlabelled (class 0, or a label left out). No validation
  split (``val_fraction 0``): with 5 labels per class a user has none to spare, and the
  latest weights are kept;
- ``random``: the default recipe from random weights, labels only;
- ``random+semi``: the same with ``semi_supervised=True`` (FixMatch, train/semi_supervised.py);
- ``moco+semi`` (optional): MoCo pretrained on the 480 particles first (``--pretrain-epochs``);
- the floor (``baselines.floor_accuracy``: radial features + logistic regression) on exactly
  the k labels of that run, and the ceiling (``baselines.simulated_ceiling``, template
  matching with the true templates) once: all on the same 120 test particles.

``--centre truth`` moves every box's particle to the box centre by the simulator's own
offsets first (a diagnostic: what off-centre picks cost), ``--centre profiles`` by
``nn.centring.centre_offsets`` (no labels); the network's own centring is an encoder
option (``--finetune-options '{"encoder_options": {"centring": 10}}'``, and
``--pretrain-options`` for MoCo); it is the default (``centre_particles``) since
2026-12-07, so rows without it since then need ``'{"centre_particles": false}'``. Each
network row also holds ``test_accuracy_with_floor``: the accuracy of the product of the
network's and the floor's probabilities (does the network add to what the radial
features say?).

Rows go to ``OUT.jsonl`` as they finish (several processes may share it: each skips rows
already there); ``--summarise`` writes ``OUT`` (JSON: rows and the mean ± sd table) and
prints the table::

    OMP_NUM_THREADS=1 python benchmarks/bench_few_labels.py --labels 5 10 20 all \\
        --seeds 0 1 --methods random random+semi --out benchmarks/results/few_labels_DATE.json
    python benchmarks/bench_few_labels.py --out benchmarks/results/few_labels_DATE.json --summarise
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the result log (one JSON row per line, keyed) is reproduce_paper's
from reproduce_paper import (  # noqa: E402
    CONFIGS,
    _append,
    experiment_data,
    simulation_config,
)
from reproduce_paper import _done as _rows  # noqa: E402

SNR = 0.1
METHODS = ("random", "random+semi", "moco+semi", "moco")


def set_arguments(parser: argparse.ArgumentParser, out_help: str = "results JSON") -> None:
    """The options that choose the benchmark's set: --out, --per-class and --snr."""
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--per-class", type=int, default=60,
                        help="particles per class (60: the 'quick' set; 60 %% train)")
    parser.add_argument("--snr", type=float, default=SNR)


def quick_set(per_class: int, snr: float):
    """The few-label benchmarks' data: the "quick" kind (ten built-in complexes, 32³ at
    10 Å) with this many particles per class at this SNR, simulation seed 0, the stratified
    60:20:20 split. Returns (config, all_data, train_idx, val_idx, test_idx)."""
    cfg = CONFIGS["quick"]
    if per_class != cfg.per_class:
        cfg = replace(cfg, per_class=per_class)
    all_data, _, train_idx, val_idx, test_idx = experiment_data(cfg, snr, seed=0)
    return cfg, all_data, train_idx, val_idx, test_idx


def _k(text: str) -> int | None:
    return None if text == "all" else int(text)


def _load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


def centred(all_data, cfg, snr, how):
    """The same boxes with each particle moved to the box centre (``shift_boxes``).

    ``truth``: by the offset the simulator drew for it (up to ``max_shift_a`` per axis), the
    best any centring could do; a diagnostic of how much the off-centre particles cost.
    ``profiles``: by ``centre_offsets`` on all boxes at once (training, validation and test
    alike, without labels), what a user can do.
    """
    from napari_cryossl.nn.centring import centre_offsets, shift_boxes
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate.subtomograms import simulate_subtomogram_details

    boxes = all_data.load(np.arange(len(all_data.class_numbers)))
    if how == "truth":
        sim = simulate_subtomogram_details(cfg.per_class, simulation_config(cfg, snr), 0)
        if not np.array_equal(sim.class_numbers, np.asarray(all_data.class_numbers)):
            raise RuntimeError("the re-simulated set differs from the benchmark's")
        offsets = sim.shifts_zyx
    elif how == "profiles":
        offsets = centre_offsets(boxes)
    else:
        raise ValueError(f"unknown centring {how!r}")
    return SubtomogramSet.from_arrays(shift_boxes(boxes, -offsets), all_data.class_numbers,
                                      voxel_size=all_data.voxel_size)


def labelled_pool(labels, train_idx, val_idx):
    """The fine-tuning pool (training + validation particles) and the labels a run is
    shown: the training split's; every other particle unlabelled (class 0)."""
    pool = np.concatenate([train_idx, val_idx])
    shown = np.asarray(labels)[pool].copy()
    shown[len(train_idx):] = 0
    return pool, shown


def label_fraction(labels, train_idx, k: int | None) -> float:
    """``label_fraction`` of a run with ``k`` labels per class (None: all)."""
    return 1.0 if k is None else k / int(np.bincount(np.asarray(labels)[train_idx]).max())


def drawn_labels(shown, fraction: float, seed: int) -> np.ndarray:
    """Rows of the pool labelled in a run: the draw fine-tuning makes with this seed
    (``split_labelled``, no validation split), so the floor sees the same labels."""
    from napari_cryossl.train import split_labelled

    return split_labelled(shown, label_fraction=fraction, val_fraction=0.0, seed=seed)[0]


def fine_tuning_set(all_data, train_idx, val_idx):
    """The training + validation particles, labels on the training split only."""
    from napari_cryossl.particles.dataset import SubtomogramSet

    pool, shown = labelled_pool(all_data.class_numbers, train_idx, val_idx)
    data = SubtomogramSet.from_arrays(all_data.load(pool), shown, voxel_size=all_data.voxel_size)
    return data, pool


def run_one(method, k, seed, args, all_data, train_idx, val_idx, test_idx, out_dir, name=None):
    from napari_cryossl.analysis.baselines import FloorClassifier
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    labels = np.asarray(all_data.class_numbers)
    data, pool = fine_tuning_set(all_data, train_idx, val_idx)
    fraction = label_fraction(labels, train_idx, k)
    chosen = drawn_labels(data.class_numbers, fraction, seed)
    test = all_data.subset(test_idx)
    truth = labels[test_idx]
    rows = []
    t0 = time.perf_counter()
    test_boxes = test.load(np.arange(len(test)))
    floor_clf = FloorClassifier().fit(data.load(chosen), np.asarray(data.class_numbers)[chosen])
    floor_proba = floor_clf.predict_proba(test_boxes)
    floor = float((floor_clf.classes_[floor_proba.argmax(1)] == truth).mean())
    rows.append({"method": "floor", "k": k, "seed": seed, "n_labels": int(len(chosen)),
                 "test_accuracy": floor, "seconds": time.perf_counter() - t0})
    init = None
    if method.startswith("moco"):
        tag = f"_e{args.pretrain_epochs}" if args.pretrain_epochs != 10 else ""
        init = out_dir / f"encoder_seed{seed}{tag}.pt"
        if not init.exists():
            from napari_cryossl.train import PretrainConfig, iter_pretrain, run

            t0 = time.perf_counter()
            run(iter_pretrain(data, PretrainConfig(epochs=args.pretrain_epochs, batch_size=16,
                                                   device=args.device, seed=seed,
                                                   **args.pretrain_options), init))
            print(f"pretrained {init} in {time.perf_counter() - t0:.0f} s", flush=True)
    config = FinetuneConfig(
        epochs=args.epochs,
        min_steps=args.steps,
        batch_size=args.batch_size,
        label_fraction=fraction,
        val_fraction=0.0,
        device=args.device,
        seed=seed,
        semi_supervised=method.endswith("+semi"),
        unlabelled_ratio=args.ratio,
        pseudo_label_threshold=args.threshold,
        unlabelled_weight=args.weight,
        pseudo_label_views=args.views,
        **args.finetune_options,
    )
    name = name or method
    clf = out_dir / f"classifier_{name}_{k}_{seed}.pt"
    t0 = time.perf_counter()
    epochs = [s for s in iter_finetune(data, config, clf, init=init) if s.event == "epoch"]
    seconds = time.perf_counter() - t0
    pred = predict(clf, test, device=args.device)
    last = epochs[-1].metrics
    row = {"method": name, "k": k, "seed": seed, "n_labels": int(len(chosen)),
           "test_accuracy": float((pred.class_numbers == truth).mean()),
           "steps": int(epochs[-1].step), "seconds": seconds,
           "train_accuracy": last.get("train_accuracy")}
    if np.array_equal(pred.classes, floor_clf.classes_):
        # the product of the network's and the floor's probabilities: does the network add
        # to what the radial features say, or say it less well?
        joint = np.log(pred.probabilities + 1e-9) + np.log(floor_proba + 1e-9)
        row["test_accuracy_with_floor"] = float((pred.classes[joint.argmax(1)] == truth).mean())
    for key in ("pseudo_label_rate", "pseudo_label_accuracy"):
        row[key] = [s.metrics.get(key) for s in epochs]
    rows.append(row)
    clf.unlink(missing_ok=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    methods = list(dict.fromkeys(
        ["floor", *[m for m in METHODS if any(r["method"] == m for r in rows)],
         *[r["method"] for r in rows if r["method"] not in ("floor", "ceiling")]]))
    ks = sorted({r["k"] for r in rows if r["method"] != "ceiling"},
                key=lambda k: 10**9 if k is None else k)
    for k in ks:
        for m in methods:
            accs = [r["test_accuracy"] for r in rows if r["method"] == m and r["k"] == k]
            if m == "floor":  # one per (k, seed): the same labels every method of that seed got
                seeds = {r["seed"] for r in rows if r["method"] == m and r["k"] == k}
                accs = [next(r["test_accuracy"] for r in rows
                             if r["method"] == m and r["k"] == k and r["seed"] == s)
                        for s in sorted(seeds)]
            if accs:
                table.append({"k": k, "method": m, "n": len(accs), "mean": float(np.mean(accs)),
                              "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                              "values": accs})
    return table


def welch(rows: list[dict], a: str, b: str, k) -> dict | None:
    """``a - b`` at ``k`` labels per class over all seeds: mean difference and Welch's p."""
    from scipy import stats

    xa = [r["test_accuracy"] for r in rows if r["method"] == a and r.get("k", -1) == k]
    xb = [r["test_accuracy"] for r in rows if r["method"] == b and r.get("k", -1) == k]
    if len(xa) < 2 or len(xb) < 2:
        return None
    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    return {"k": k, "a": a, "b": b, "n": [len(xa), len(xb)],
            "difference": float(np.mean(xa) - np.mean(xb)), "p": p if np.isfinite(p) else 1.0}


def paired_difference(rows: list[dict], a: str, b: str) -> dict | None:
    """``a - b`` over the (labels, seed) pairs both have: mean, sd, n, paired t-test p."""
    from scipy import stats

    acc = {(r["method"], r["k"], r["seed"]): r["test_accuracy"] for r in rows if "k" in r}
    pairs = sorted({(k, s) for m, k, s in acc if m == a and (b, k, s) in acc},
                   key=lambda p: (10**9 if p[0] is None else p[0], p[1]))
    if len(pairs) < 2:
        return None
    diff = np.array([acc[(a, k, s)] - acc[(b, k, s)] for k, s in pairs])
    p = float(stats.ttest_rel([acc[(a, k, s)] for k, s in pairs],
                              [acc[(b, k, s)] for k, s in pairs]).pvalue)
    return {"mean": float(diff.mean()), "sd": float(diff.std(ddof=1)), "n": len(pairs),
            "p": p if np.isfinite(p) else 1.0, "pairs": [[k, s] for k, s in pairs],
            "differences": diff.tolist()}


def markdown(table, ceiling, n_train: int | None = None) -> str:
    methods = list(dict.fromkeys(t["method"] for t in table))
    ks = list(dict.fromkeys(t["k"] for t in table))
    lines = ["| labels per class | " + " | ".join(methods) + " | ceiling |",
             "|---" * (len(methods) + 2) + "|"]
    for k in ks:
        cells = []
        for m in methods:
            t = next((t for t in table if t["k"] == k and t["method"] == m), None)
            if t is None:
                cells.append("")
            else:
                sd = f" ± {100 * t['sd']:.1f}" if t["sd"] is not None else ""
                cells.append(f"{100 * t['mean']:.1f}{sd} (n {t['n']})")
        ceil = f"{100 * ceiling:.1f}" if ceiling is not None else ""
        lines.append(f"| {f'all ({n_train})' if k is None else k} | " + " | ".join(cells) + f" | {ceil} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    set_arguments(parser, "results JSON (rows in OUT.jsonl)")
    parser.add_argument("--labels", nargs="+", type=_k, default=[5, 10, 20, None],
                        help="labels per class ('all': the training split's, 36 of 60)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["random", "random+semi"])
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps of every run")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ratio", type=int, default=1, help="unlabelled per labelled particle")
    parser.add_argument("--threshold", type=float, default=0.7, help="pseudo-label threshold")
    parser.add_argument("--weight", type=float, default=1.0, help="unlabelled loss weight")
    parser.add_argument("--views", type=int, default=1, choices=(1, 4),
                        help="pseudo-labels from one random half-turn or the mean of all four")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--name", help="the rows' method name (one method; default: the method)")
    parser.add_argument("--finetune-options", type=json.loads, default={},
                        help='FinetuneConfig overrides as JSON, e.g. \'{"head_init": "probe"}\'')
    parser.add_argument("--pretrain-options", type=json.loads, default={},
                        help="PretrainConfig fields as JSON (the encoders in OUT_work/ are reused: "
                             "give each set of options its own OUT)")
    parser.add_argument("--ceiling-rotations", type=int, default=500,
                        help="0: no ceiling in this process")
    parser.add_argument("--centre", choices=("none", "truth", "profiles"), default="none",
                        help="move every box's particle to the box centre first: 'truth' by the "
                             "simulator's own offsets (a diagnostic: what centring is worth), "
                             "'profiles' by nn.centring.centre_offsets (no labels)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args(argv)
    if args.name and len(args.methods) > 1:
        parser.error("--name names the rows of one method: give one --methods")

    import torch

    torch.set_num_threads(1)
    jsonl = args.out.with_suffix(".jsonl")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = _rows(jsonl)
    if args.summarise:
        rows = list(done.values())
        ceiling = next((r["test_accuracy"] for r in rows if r["method"] == "ceiling"), None)
        table = summarise([r for r in rows if r["method"] != "ceiling"])
        text = markdown(table, ceiling, round(0.6 * args.per_class))
        paired = paired_difference(rows, "random+semi", "random")
        if paired:
            text += (f"\n\nrandom+semi - random, paired by (labels, seed): "
                     f"{100 * paired['mean']:+.1f} ± {100 * paired['sd']:.1f} points over "
                     f"{paired['n']} pairs (paired t-test p = {paired['p']:.2f})")
        tests = []
        for k in dict.fromkeys(t["k"] for t in table):
            for m in dict.fromkeys(t["method"] for t in table):
                if m not in ("random", "floor") and (w := welch(rows, m, "random", k)):
                    tests.append(w)
                    text += (f"\n{m} - random at {'all' if k is None else k} labels: "
                             f"{100 * w['difference']:+.1f} points "
                             f"(n {w['n'][0]}/{w['n'][1]}, Welch p = {w['p']:.3f})")
        result = {
            "benchmark": f"few labels per class, 10 built-in complexes, 32³ at 10 Å, "
                         f"SNR {args.snr:g}, {args.per_class} per class "
                         "(reproduce_paper 'quick' kind of data, seed 0)",
            "device": (f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread"
                       if args.device == "cpu" else args.device),
            "torch": torch.__version__,
            "ceiling": ceiling,
            "table": table,
            "paired_semi_minus_random": paired,
            "welch_against_random": tests,
            "rows": rows,
            "markdown": text,
        }
        args.out.write_text(json.dumps(result, indent=1))
        print(text)
        return 0

    cfg, all_data, train_idx, val_idx, test_idx = quick_set(args.per_class, args.snr)
    if args.centre != "none":
        all_data = centred(all_data, cfg, args.snr, args.centre)
    out_dir = args.out.parent / (args.out.stem + "_work")
    out_dir.mkdir(exist_ok=True)
    if args.ceiling_rotations and "ceiling" not in done:
        from napari_cryossl.analysis.baselines import simulated_ceiling

        t0 = time.perf_counter()
        result = simulated_ceiling(all_data.load(test_idx), simulation_config(cfg, args.snr),
                                   n_rotations=args.ceiling_rotations)
        acc = float((result.class_numbers == np.asarray(all_data.class_numbers)[test_idx]).mean())
        row = {"key": "ceiling", "method": "ceiling", "test_accuracy": acc,
               "n_rotations": args.ceiling_rotations, "seconds": time.perf_counter() - t0,
               "load_average": _load_average()}
        _append(jsonl, row)
        print(f"ceiling {acc:.3f}", flush=True)
    for seed in args.seeds:
        for k in args.labels:
            for method in args.methods:
                key = f"{args.name or method}|{k}|{seed}"
                if key in _rows(jsonl):
                    continue
                for row in run_one(method, k, seed, args, all_data, train_idx, val_idx,
                                   test_idx, out_dir, name=args.name):
                    row["key"] = f"{row['method']}|{k}|{seed}"
                    row["load_average"] = _load_average()
                    row["settings"] = {"steps": args.steps, "batch_size": args.batch_size,
                                       "ratio": args.ratio, "threshold": args.threshold,
                                       "weight": args.weight, "views": args.views,
                                       "pretrain_epochs": args.pretrain_epochs,
                                       "finetune_options": args.finetune_options,
                                       "pretrain_options": args.pretrain_options,
                                       "centre": args.centre}
                    if row["key"] not in _rows(jsonl):
                        _append(jsonl, row)
                    print(f"{row['key']}: {row['test_accuracy']:.3f} "
                          f"({row.get('seconds', 0):.0f} s) "
                          f"pseudo {row.get('pseudo_label_rate')} "
                          f"{row.get('pseudo_label_accuracy')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
