"""Real complexes in the simulator: speed, and the floor and ceiling of classification.

Measures on the CPU (numpy/scipy simulation; the template matching uses torch):

  * the time of ``cryossl simulate --structures builtin --classes 10 --per-class 500
    --box-size 32 --voxel-size 10 --snr 0.05`` as a user runs it (a subprocess, imports
    and MRC writing included), with an empty density cache and again with a warm one;
  * the floor: a logistic regression on rotation-invariant radial features
    (`napari_cryossl.analysis.baselines.FloorClassifier`) on noise-free built-in classes, in the
    paper's setting (crowded, shifted, wedge, CTF) and on isolated centred particles;
  * the ceiling: template matching with the true templates
    (`napari_cryossl.analysis.baselines.simulated_ceiling`) on isolated particles at SNR 0.05
    (and, for reference, on the crowded paper setting at SNR 0.05).

    python benchmarks/bench_structures.py                       # everything (~10 min)
    python benchmarks/bench_structures.py --skip-cli --per-class 20 --rotations 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _time_cli(out: Path, cache: Path, per_class: int) -> float:
    env = dict(os.environ, NAPARI_CRYOSSL_CACHE=str(cache), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "napari_cryossl", "simulate", "--structures", "builtin",
        "--classes", "10", "--per-class", str(per_class), "--box-size", "32",
        "--voxel-size", "10", "--snr", "0.05", "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _split(volumes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Half of each class for training, half for testing (the simulator shuffles)."""
    train = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train[idx[: len(idx) // 2]] = True
    return volumes[train], labels[train], volumes[~train], labels[~train]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=100, help="subtomograms per class")
    parser.add_argument("--ceiling-per-class", type=int, default=10)
    parser.add_argument("--rotations", type=int, default=500, help="template-matching rotations")
    parser.add_argument("--cli-per-class", type=int, default=500)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument(
        "--snr-reference",
        choices=("set", "subtomogram"),
        default="set",
        help="noise level of the ceiling's data: one for the set, or per subtomogram",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/structures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "src"))
    from napari_cryossl.analysis.baselines import floor_accuracy, simulated_ceiling
    from napari_cryossl.simulate import SimulationConfig, class_names, simulate_subtomograms

    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "classes": class_names(10, "builtin"),
    }
    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            cold = _time_cli(Path(tmp) / "a", cache, args.cli_per_class)
            warm = _time_cli(Path(tmp) / "b", cache, args.cli_per_class)
        results["cli_seconds"] = {"empty_cache": cold, "warm_cache": warm}
        print(f"cryossl simulate 10 x {args.cli_per_class}: {cold:.1f} s (empty cache), "
              f"{warm:.1f} s (warm)", flush=True)  # fmt: skip

    paper = SimulationConfig(
        structures="builtin",
        n_classes=10,
        box_size=32,
        voxel_size=10.0,
        snr_reference=args.snr_reference,
    )
    isolated = replace(paper, n_neighbors=0, max_shift_px=1.0)
    settings = {
        "paper setting (crowded, shift 3, wedge, CTF)": paper,
        "isolated, centred (shift 1, wedge, CTF)": isolated,
    }
    results["floor"] = {}
    for name, config in settings.items() if not args.skip_floor else ():
        t = time.perf_counter()
        vols, labels = simulate_subtomograms(args.per_class, replace(config, snr=None), args.seed)
        acc = floor_accuracy(*_split(vols, labels))
        results["floor"][name] = {"snr": "inf", "accuracy": acc, "n": len(labels)}
        print(f"floor, SNR inf, {name}: {acc:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)

    results["ceiling"] = {}
    for name, config in settings.items():
        t = time.perf_counter()
        cfg = replace(config, snr=0.05)
        vols, labels = simulate_subtomograms(args.ceiling_per_class, cfg, args.seed + 1)
        match = simulated_ceiling(vols, cfg, n_rotations=args.rotations, chunk=8)
        acc = float((match.class_numbers == labels).mean())
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (labels - 1, match.class_numbers - 1), 1)
        results["ceiling"][name] = {
            "snr": 0.05,
            "snr_reference": args.snr_reference,
            "accuracy": acc,
            "n": len(labels),
            "rotations": args.rotations,
            "per_class": (np.diag(confusion) / confusion.sum(1)).round(3).tolist(),
            "seconds": time.perf_counter() - t,
        }
        print(f"ceiling, SNR 0.05, {name}: {acc:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)

    results["config"] = {k: v for k, v in asdict(paper).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "structures.json" if args.snr_reference == "set" else "structures_snr_per_box.json"
    (args.out / name).write_text(json.dumps(results, indent=2, default=str))
    print(f"-> {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
