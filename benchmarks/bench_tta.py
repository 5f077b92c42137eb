"""Test-time augmentation and ensembles of finished classifiers, on the same test split.

For classifiers that `bench_recipe.py` fine-tuned (its ``classifier_*.pt`` files, one per
run), score the test split of reproduce_paper's data with 1, 8, 16, 32... views
(``predict(..., tta=k)``), and the average of the runs' probabilities (an ensemble).
Nothing is trained; the numbers say what more views or more runs would give.

    python benchmarks/bench_tta.py --snr 0.05 --views 1 8 16 32 \\
        benchmarks/results/recipe_snr005_120/classifier_default120_*.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifiers", nargs="+", type=Path)
    p.add_argument("--config", default="reduced")
    p.add_argument("--data", default="shapes", choices=("shapes", "structures"))
    p.add_argument("--snr", default="0.05")
    p.add_argument("--views", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="append the rows to this JSONL")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dataclasses import replace

    from reproduce_paper import CONFIGS, experiment_data

    from napari_cryossl.analysis.predict import predict

    cfg = replace(CONFIGS[args.config], data=args.data)
    snr = None if args.snr in ("inf", "none") else float(args.snr)
    all_data, _u, _train, _val, test_idx = experiment_data(cfg, snr)
    test = all_data.subset(test_idx)
    truth = np.asarray(all_data.class_numbers)[test_idx]
    rows = []
    for k in args.views:
        probs = []
        for path in args.classifiers:
            t0 = time.perf_counter()
            result = predict(path, test, device="cpu", tta=k)
            order = np.argsort(result.classes)
            probs.append((result.classes[order], result.probabilities[:, order]))
            acc = float((result.class_numbers == truth).mean())
            rows.append({"classifier": path.name, "views": k, "accuracy": round(acc, 4),
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
        if len(probs) > 1:
            classes = probs[0][0]
            mean = np.mean([pr for _c, pr in probs], axis=0)
            acc = float((classes[mean.argmax(1)] == truth).mean())
            rows.append({"classifier": f"ensemble of {len(probs)}", "views": k,
                         "accuracy": round(acc, 4)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        with open(args.out, "a") as fh:
            for row in rows:
                fh.write(json.dumps({**row, "snr": args.snr, "date": time.strftime("%Y-%m-%d")})
                         + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
