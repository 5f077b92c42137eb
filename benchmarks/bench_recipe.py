"""Which fine-tuning recipe works with few labels? One variant at a time, beside floor and ceiling.

On the paper's simulated benchmark (reproduce_paper's data: 10 classes x 500, crowded,
CTF, ±60° wedge; the reduced configuration's 16^3 boxes at 20 Å), fine-tune from random
weights with `FinetuneConfig` overrides and score on the test split, next to

- the floor: logistic regression on rotation-invariant radial features fitted on the
  same labelled particles (`baselines.FloorClassifier`);
- the ceiling: template matching with the simulator's true, filtered templates
  (`baselines.simulated_ceiling`, computed once per SNR and cached in --out).

    python benchmarks/bench_recipe.py --snr 0.5 --labels 1.0 --name default
    python benchmarks/bench_recipe.py --snr 0.5 --labels 1.0 --name paper recipe=paper
    python benchmarks/bench_recipe.py --snr 0.5 --name wedge \\
        'augment_options={"rotation": "so3", "affine_p": 1, "crop_p": 0, "wedge_deg": 60}'

Each run appends one JSON line to --out/recipe.jsonl; `--table` prints them all.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def ceiling(cfg_sim, volumes, labels, out: Path, key: str, n_rotations: int) -> float:
    """Template-matching accuracy on the test boxes, cached per data set."""
    from napari_cryossl.analysis.baselines import simulated_ceiling

    cache = out / "ceiling.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        t0 = time.perf_counter()
        result = simulated_ceiling(volumes, cfg_sim, n_rotations=n_rotations)
        known[key] = {
            "accuracy": float((result.class_numbers == labels).mean()),
            "n_rotations": n_rotations,
            "seconds": time.perf_counter() - t0,
        }
        cache.write_text(json.dumps(known, indent=2))
    return known[key]["accuracy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="FinetuneConfig field=value")
    p.add_argument("--name", default="default")
    p.add_argument("--config", default="reduced", help="reproduce_paper configuration")
    p.add_argument(
        "--data",
        choices=("shapes", "structures"),
        default="shapes",
        help="synthetic shapes (the hard case, default here) or the ten real complexes",
    )
    p.add_argument("--snr", default="0.5", help="SNR, or 'inf' for noise-free")
    p.add_argument("--labels", type=float, default=1.0, help="fraction of training labels")
    p.add_argument("--run", type=int, default=0, help="seed of the label subset and training")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--ceiling-rotations", type=int, default=500)
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/recipe"))
    p.add_argument("--table", action="store_true", help="print the results so far and exit")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "recipe.jsonl"
    if args.table:
        rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        print("| name | SNR | labels | run | test acc | (no TTA) | floor | ceiling | steps | s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['name']} | {r['snr']} | {r['labels']:.0%} | {r['run']} | "
                f"{r['accuracy']:.3f} | {r.get('accuracy_without_tta', float('nan')):.3f} | "
                f"{r['floor']:.3f} | {r.get('ceiling') or float('nan'):.3f}"
                f" | {r['steps']} | {r['seconds']:.0f} |"
            )
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dataclasses import replace

    from reproduce_paper import CONFIGS, experiment_data, label_subset, simulation_config

    from napari_cryossl.analysis.baselines import floor_accuracy
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    cfg = replace(CONFIGS[args.config], data=args.data)
    snr = None if args.snr in ("inf", "none") else float(args.snr)
    all_data, _unlabelled, train_idx, val_idx, test_idx = experiment_data(cfg, snr)
    labels = np.asarray(all_data.class_numbers)
    chosen = label_subset(train_idx, labels, args.labels, seed=1000 * args.run + int(100 * args.labels))
    boxes = all_data.load(np.arange(len(all_data)))
    floor = floor_accuracy(boxes[chosen], labels[chosen], boxes[test_idx], labels[test_idx])
    ceil = None
    if not args.no_ceiling:
        ceil = ceiling(
            simulation_config(cfg, snr),
            boxes[test_idx],
            labels[test_idx],
            args.out,
            f"{args.config}|{args.snr}" + ("|structures" if args.data == "structures" else ""),
            args.ceiling_rotations,
        )
    overrides = {}
    for item in args.overrides:
        key, _, text = item.partition("=")
        overrides[key] = _value(text)
    pool = np.concatenate([chosen, val_idx])
    f_cfg = FinetuneConfig(
        val_fraction=len(val_idx) / len(pool), seed=args.run, device="cpu", **overrides
    )
    # One file per run: concurrent runs of one variant must never share a classifier
    # (until 2026-12-01 they did, and a run could score another run's network).
    tag = f"{args.name}_{args.data}_snr{args.snr}_l{args.labels:g}_r{args.run}"
    clf = args.out / f"classifier_{tag}.pt"
    t0 = time.perf_counter()
    last = None
    for status in iter_finetune(all_data.subset(pool), f_cfg, clf):
        last = status
    pred = predict(clf, all_data.subset(test_idx), device="cpu")
    seconds = time.perf_counter() - t0
    acc = float((pred.class_numbers == labels[test_idx]).mean())
    single = predict(clf, all_data.subset(test_idx), device="cpu", tta=1)
    acc_single = float((single.class_numbers == labels[test_idx]).mean())
    row = {
        "name": args.name,
        "config": args.config,
        "data": args.data,
        "snr": args.snr,
        "labels": args.labels,
        "n_labels": int(len(chosen)),
        "run": args.run,
        "overrides": overrides,
        "accuracy": acc,
        "accuracy_without_tta": acc_single,
        "floor": floor,
        "ceiling": ceil,
        "steps": int(last.n_steps) if last else 0,
        "seconds": seconds,
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    flag = "  BELOW THE FLOOR" if acc < floor else ""
    print(
        f"{args.name}: test accuracy {acc:.3f} (without test-time augmentation "
        f"{acc_single:.3f})  floor {floor:.3f}  ceiling "
        f"{ceil if ceil is not None else float('nan'):.3f}  ({len(chosen)} labels, "
        f"{row['steps']} steps, {seconds:.0f} s){flag}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
