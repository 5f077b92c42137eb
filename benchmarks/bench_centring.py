"""How precisely does centring find each particle's centre, and what does precision buy?

Data: the "quick" set of ``reproduce_paper.py`` (the ten built-in complexes x 60, crowded,
CTF, ±60° wedge, 32³ boxes at 10 Å, SNR 0.1; every particle drawn up to 3 voxels off the
box centre on each axis), the same simulation seed and split as ``bench_few_labels.py``.
Each row moves every box by some offsets (``nn.centring.shift_boxes``) and reports

- the error of those offsets against the simulator's own (median and 90th percentile of
  the 3D distance, voxels);
- the floor (``baselines.floor_accuracy``: radial features + logistic regression, whose
  features are rotation-invariant only about the particle's centre) with 9 labels per
  class drawn as ``bench_few_labels`` draws them (5 seeds, mean ± sd) and with all 36
  training labels per class, on the 120 test particles.

Rows: no centring; the simulator's offsets (the best any centring can do); the
simulator's offsets plus Gaussian noise of a given sd per axis, or rounded to whole
voxels (how precise centring must be); ``centre_offsets`` with its defaults and with each
set of options given (``--variants``, JSON objects); and references fitted on a sample of
the boxes, applied to all (how large a sample training needs).

    OMP_NUM_THREADS=1 python benchmarks/bench_centring.py \\
        --out benchmarks/results/centring_precision_DATE.json

``--separation`` instead computes ``nn.centring.separation`` (how well the fitted
references find particles, against the same boxes with scrambled phases) on a sample of
each benchmark set the network's centring was measured on, as training fits it.

``--cost`` instead times what centring adds to a prediction batch of ``rb3d-small``
(no gradients; 16³ and 32³, batch 64, the median of interleaved repeats): the encoder
without centring, with it, and its two steps alone (finding the offsets; moving the boxes
by a gather, ``roll_boxes``, against the Fourier shift, ``shift_boxes``, used until
2026-12-07), and the fit of the references on the sample training takes.
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

from bench_few_labels import (  # noqa: E402
    drawn_labels,
    label_fraction,
    labelled_pool,
    quick_set,
    set_arguments,
)
from reproduce_paper import CONFIGS, experiment_data, simulation_config  # noqa: E402

#: centre_offsets options tried by default beside its defaults.
VARIANTS = (
    {"n_references": 1},
    {"n_references": 5},
    {"n_references": 20},
    {"sigma": 1.0},
    {"sigma": 2.0},
    {"iterations": 8},
    {"radius": 10},
)
NOISE = (0.3, 0.6, 1.0, 1.5)
#: References fitted on a random sample of this many boxes, then applied to all.
FIT_SAMPLES = (150, 300)


def fitted_on_sample(boxes, n: int, seed: int = 0) -> np.ndarray:
    """Offsets of every box against references fitted on a random sample of ``n`` of them
    (what training does with many particles, ``train.loop.CENTRING_SAMPLE``)."""
    import torch

    from napari_cryossl.nn.centring import find_offsets, fit_references, reference_spectra

    x = torch.as_tensor(boxes).float()
    b = x.shape[-1]
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))
    refs, _ = fit_references(x[rows], max_shift=b / 8, seed=seed)
    spectra = reference_spectra(refs, b, 0.4 * b)
    found = [find_offsets(x[lo:lo + 256], spectra, b / 8)[0] for lo in range(0, len(x), 256)]
    return torch.cat(found).numpy().astype(np.float64)


def floor_scores(boxes, labels, train_idx, val_idx, test_idx, k=9, seeds=range(5)):
    """Floor accuracy with ``k`` labels per class (one draw per seed) and with all."""
    from napari_cryossl.analysis.baselines import floor_accuracy

    pool, shown = labelled_pool(labels, train_idx, val_idx)
    fraction = label_fraction(labels, train_idx, k)
    few = []
    for seed in seeds:
        chosen = drawn_labels(shown, fraction, seed)
        few.append(floor_accuracy(boxes[pool][chosen], shown[chosen], boxes[test_idx],
                                  labels[test_idx]))
    every = floor_accuracy(boxes[train_idx], labels[train_idx], boxes[test_idx],
                           labels[test_idx])
    return few, every


def cost_of(box: int, repeats: int = 7) -> dict:
    """Seconds per batch of 64 boxes of ``box``³ (median of ``repeats``, cases interleaved)."""
    import torch

    from napari_cryossl.nn.centring import (
        find_offsets,
        fit_references,
        reference_spectra,
        roll_boxes,
        shift_boxes,
    )
    from napari_cryossl.nn.models import build_encoder, centring_of
    from napari_cryossl.train.loop import CENTRING_SAMPLE, centring_sample

    torch.manual_seed(0)
    x = torch.randn(64, 1, box, box, box)
    plain = build_encoder("rb3d-small", box).eval()
    centred = build_encoder("rb3d-small", box, centring=10).eval()
    centring = centring_of(centred)
    centring.fit(torch.randn(200, box, box, box))
    spectra = reference_spectra(centring.profiles, box, 0.4 * box)
    offsets, _ = find_offsets(x[:, 0], spectra, centring.max_shift)
    cases = {
        "encoder": lambda: plain(x),
        "encoder with centring": lambda: centred(x),
        "find the offsets": lambda: find_offsets(x[:, 0], spectra, centring.max_shift),
        "move: roll_boxes": lambda: roll_boxes(x[:, 0], -offsets),
        "move: shift_boxes": lambda: shift_boxes(x[:, 0], -offsets),
    }
    # as many boxes as training fits on from a large set
    sample = torch.randn(len(centring_sample(CENTRING_SAMPLE, box, 0)), box, box, box)
    t0 = time.perf_counter()
    fit_references(sample, max_shift=box / 8)
    fit_seconds = time.perf_counter() - t0
    times = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    row = {"box": box, "batch": 64, **{k: float(np.median(v)) for k, v in times.items()},
           "fit boxes": len(sample), "fit the references (s)": fit_seconds}
    print(f"{box}³: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in row.items()
                                 if isinstance(v, float) and "(s)" not in k)
          + f"; fitting on {len(sample)} boxes {fit_seconds:.1f} s", flush=True)
    return row


#: (name, reproduce_paper configuration, data, SNR, particles per class or None).
SEPARATION_SETS = (
    ("built-in complexes, 32³ at 10 Å, SNR 0.1, 60 per class", "quick", "structures", 0.1, None),
    ("built-in complexes, 32³ at 10 Å, SNR 0.05, 100 per class", "quick", "structures", 0.05,
     100),
    ("synthetic shapes, 16³ at 20 Å, SNR 0.5", "reduced", "shapes", 0.5, None),
    ("synthetic shapes, 16³ at 20 Å, SNR 0.1", "reduced", "shapes", 0.1, None),
    ("synthetic shapes, 16³ at 20 Å, SNR 0.05", "reduced", "shapes", 0.05, None),
)


def separations() -> list[dict]:
    """``Centring.fit``'s separation on each of ``SEPARATION_SETS``."""
    from napari_cryossl.nn.centring import MIN_SEPARATION
    from napari_cryossl.nn.models import build_encoder, centring_of
    from napari_cryossl.train.loop import centring_sample

    rows = []
    for name, config, data, snr, per_class in SEPARATION_SETS:
        cfg = replace(CONFIGS[config], data=data)
        if per_class:
            cfg = replace(cfg, per_class=per_class)
        all_data, *_ = experiment_data(cfg, snr, seed=0)
        b = int(all_data.box_size)
        rows_ = centring_sample(len(all_data.class_numbers), b, 0)
        centring = centring_of(build_encoder("rb3d-small", b, centring=10))
        t0 = time.perf_counter()
        centring.fit(all_data.load(rows_))
        row = {"set": name, "boxes": len(rows_), "separation": centring.separation,
               "centres": centring.is_active, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name}: separation {row['separation']:.2f} on {len(rows_)} boxes "
              f"({'centres' if row['centres'] else f'declines, < {MIN_SEPARATION}'})",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    set_arguments(parser)
    parser.add_argument("--labels", type=int, default=9, help="labels per class of the floor")
    parser.add_argument("--variants", nargs="*", type=json.loads, default=list(VARIANTS),
                        help="centre_offsets options, one JSON object each")
    parser.add_argument("--cost", action="store_true",
                        help="time centring in a prediction batch instead")
    parser.add_argument("--separation", action="store_true",
                        help="how well centring finds particles on each benchmark set instead")
    args = parser.parse_args(argv)

    import torch

    if args.separation:
        torch.set_num_threads(1)
        rows = separations()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "nn.centring.separation of the references Centring.fit fits, on a "
                         "sample of each set as training draws it",
            "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows},
            indent=1))
        return 0
    if args.cost:
        torch.set_num_threads(1)
        rows = [cost_of(16), cost_of(32)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "centring's cost in a prediction batch of rb3d-small (batch 64)",
            "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread",
            "load_average": os.getloadavg()[0], "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
        return 0

    from napari_cryossl.nn.centring import centre_offsets, shift_boxes
    from napari_cryossl.simulate.subtomograms import simulate_subtomogram_details

    torch.set_num_threads(1)
    cfg, all_data, train_idx, val_idx, test_idx = quick_set(args.per_class, args.snr)
    labels = np.asarray(all_data.class_numbers)
    boxes = all_data.load(np.arange(len(labels)))
    sim = simulate_subtomogram_details(cfg.per_class, simulation_config(cfg, args.snr), 0)
    if not np.array_equal(sim.class_numbers, labels):
        raise RuntimeError("the re-simulated set differs from the benchmark's")
    truth = sim.shifts_zyx
    rng = np.random.default_rng(0)

    def offsets_of():
        yield "none", {}, lambda: np.zeros_like(truth)
        yield "simulator's offsets", {}, lambda: truth
        yield "simulator's, rounded to whole voxels", {}, lambda: np.round(truth)
        for sd in NOISE:
            yield f"simulator's + noise sd {sd} voxel per axis", {"noise_sd": sd}, (
                lambda sd=sd: truth + rng.normal(0, sd, truth.shape))
        yield "centre_offsets (defaults)", {}, lambda: centre_offsets(boxes)
        for n in FIT_SAMPLES:
            yield f"references fitted on {n} boxes, applied to all", {"fit_sample": n}, (
                lambda n=n: fitted_on_sample(boxes, n))
        for options in args.variants:
            yield f"centre_offsets {json.dumps(options)}", options, (
                lambda o=options: centre_offsets(boxes, **o))

    rows = []
    for name, options, find in offsets_of():
        t0 = time.perf_counter()
        offsets = np.asarray(find(), dtype=np.float64)
        seconds = time.perf_counter() - t0
        error = np.linalg.norm(offsets - truth, axis=1)
        few, every = floor_scores(shift_boxes(boxes, -offsets), labels, train_idx, val_idx,
                                  test_idx, k=args.labels)
        row = {"offsets": name, "options": options,
               "error_median": float(np.median(error)),
               "error_p90": float(np.percentile(error, 90)),
               "floor_few": few, "floor_few_mean": float(np.mean(few)),
               "floor_few_sd": float(np.std(few, ddof=1)), "floor_all": every,
               "seconds": seconds}
        rows.append(row)
        print(f"{name:58s} error {row['error_median']:.2f} / {row['error_p90']:.2f} voxels | "
              f"floor {100 * row['floor_few_mean']:.1f} ± {100 * row['floor_few_sd']:.1f} % "
              f"({args.labels} labels), {100 * every:.1f} % (all) | {seconds:.0f} s", flush=True)
    lines = [f"| offsets | error, median / p90 (voxels) | floor, {args.labels} labels per class "
             "(5 draws) | floor, all labels |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['offsets']} | {r['error_median']:.2f} / {r['error_p90']:.2f} | "
                     f"{100 * r['floor_few_mean']:.1f} ± {100 * r['floor_few_sd']:.1f} % | "
                     f"{100 * r['floor_all']:.1f} % |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": f"centring precision, 10 built-in complexes, 32³ at 10 Å, SNR {args.snr:g}, "
                     f"{args.per_class} per class (reproduce_paper 'quick' data, seed 0)",
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "rows": rows, "markdown": "\n".join(lines)}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
