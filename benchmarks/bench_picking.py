"""Picking scored with the CZ Imaging Institute challenge's metric, on cluttered simulations.

    python benchmarks/bench_picking.py                       # picking, both SNRs
    python benchmarks/bench_picking.py --snrs 0.1 --classify # + classification with junk

Data: simulated tomograms (`simulate_tomogram_details`, default clutter: gold, vesicles,
membranes, ice, actin, microtubules) of five built-in complexes (`KINDS`: the 80S
ribosome, TRiC, apoferritin, RuvAB, GluA3-NTD, 123-279 Å) at 15 Å per voxel, so the
smallest is 8 voxels across; 48 x 192 x 192 voxels (720 x 2880 x 2880 Å), 90 particles
each, several seeds per SNR.

Metric (`napari_cryossl.particles.picking_metrics.score_picks`): per kind, a pick is a hit within
half the particle's radius (the radius holding 99 % of the complex's mass) of a true
centre, one-to-one; TP/FP/FN pooled over the tomograms; F-beta with beta 4; the
unweighted mean over the kinds. Also recall, precision, picks per particle, and false
picks whose centre lies on clutter (`simulate.match_clutter` with the kind's radius as
the margin).

Pickers, each run once per kind and its picks given that kind (what a user would do
with one `cryossl pick` per kind):

- ``dog``: Difference of Gaussians at the kind's diameter, automatic threshold, no
  refinement (the floor: it knows only the size);
- ``dog-refined``: the same with the refinement of picks to particle centres, when
  `pick_particles` offers one (`REFINE_OPTION`);
- ``template``: template matching (`template_matching.match_template`) with the kind's
  true template (the built-in complex rendered at the tomogram's voxel size as the
  simulator renders it, `simulate.class_templates`), automatic threshold (1 false alarm
  per tomogram), the tomogram's ±60° wedge (the ceiling: it knows the shape);
- ``learned``: pick by example (`learned_picker`): one picker per SNR trained with the
  defaults on ``--clicks`` labelled particles per kind of a separate training tomogram
  (``--train-shape``, ``--train-particles``, seed 1000: never scored), the other
  particles of that tomogram left out (as when a user clicked a few), then run once over
  each test tomogram; its picks carry the class it predicts, so its per-kind F4 also
  asks it to tell the kinds apart. Also scored class-blind (each pick given the kind of
  the nearest true particle): does it find particles, whatever their kind.

``--classify`` adds the classification of refined-DoG picks (one diameter for all kinds)
on the first tomogram with a junk class ("not a particle": picks within no particle's
radius): a short fine-tune with the default recipe on a few labels per class, the floor
(`baselines.FloorClassifier`) on the same labels and the ceiling (template matching of
the boxes with the true templates, `baselines.simulated_ceiling`, junk below a score
threshold chosen on the same labels).

Results: ``benchmarks/results/picking.json`` (and ``picking_classify.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = ("ribosome80S", "TRiC", "apoferritin", "RuvAB", "GluA3-NTD")
RESULTS = Path(__file__).resolve().parent / "results"


def _refine_option() -> str | None:
    """The keyword of `pick_particles` that refines picks to particle centres, if any."""
    from napari_cryossl.particles.picking import pick_particles

    names = inspect.signature(pick_particles).parameters
    for name in names:
        if "refine" in name or "centre" in name or "center" in name:
            return name
    return None


REFINE_OPTION = _refine_option()


def _device_line() -> dict:
    load = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = cpu
    return {
        "device": f"{os.cpu_count()}-core {platform.machine()} CPU ({model}), no GPU",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": [round(x, 2) for x in load],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def sim_config(snr: float, voxel_size: float, box_size: int = 24):
    from napari_cryossl.simulate import SimulationConfig

    return SimulationConfig(
        n_classes=len(KINDS),
        box_size=box_size,
        voxel_size=voxel_size,
        snr=snr,
        structures=KINDS,
    )


def kind_radii(config) -> dict[str, float]:
    """Radius (voxels) holding 99 % of each complex's mass, as the simulator sizes them."""
    from napari_cryossl.simulate.render import _density_bank

    bank = _density_bank(config)
    return {name: float(r) for name, r in zip(KINDS, bank.radii, strict=True)}


def true_templates(config) -> dict[str, np.ndarray]:
    """Each kind's density rendered at the tomogram's voxel size, positive = protein."""
    from napari_cryossl.simulate import class_templates

    return dict(zip(KINDS, class_templates(config), strict=True))


def _with_kind(table: pd.DataFrame, kind: str, tomo: str) -> pd.DataFrame:
    out = table[["x", "y", "z"]].copy()
    out["score"] = table["score"].to_numpy() if "score" in table else np.nan
    out["kind"] = kind
    out["tomo_name"] = tomo
    return out


def train_learned_picker(config, args, out: Path) -> tuple[Path, float]:
    """A learned picker trained on ``args.clicks`` particles per kind of one tomogram."""
    from napari_cryossl.ops import run
    from napari_cryossl.particles.learned_picker import PickerConfig, iter_train_picker
    from napari_cryossl.simulate import simulate_tomogram_details

    sim = simulate_tomogram_details(
        tuple(args.train_shape), args.train_particles, config, seed=1000
    )
    rng = np.random.default_rng(0)
    table = sim.particles
    chosen = np.concatenate([
        rng.choice(np.flatnonzero(table["class_number"] == k),
                   size=min(args.clicks, int((table["class_number"] == k).sum())), replace=False)
        for k in range(1, len(KINDS) + 1)
    ])
    clicks = table.iloc[np.sort(chosen)]
    settings = PickerConfig() if args.picker_steps is None else PickerConfig(steps=args.picker_steps)
    t0 = time.perf_counter()
    run(iter_train_picker(
        [(sim.volume, clicks)], classes={i + 1: n for i, n in enumerate(KINDS)},
        config=settings, out=out,
    ))
    seconds = time.perf_counter() - t0
    print(f"learned picker: trained on {len(clicks)} clicks in {seconds:.1f} s", flush=True)
    return out, seconds


def run_pickers(volume, radii, templates, pickers, args, tomo: str, picker_path=None):
    """{picker: (picks with kind and tomo_name, seconds)} for one tomogram."""
    from napari_cryossl.particles.learned_picker import iter_pick_with_model
    from napari_cryossl.particles.picking import pick_particles
    from napari_cryossl.particles.template_matching import match_template

    out = {}
    for picker in pickers:
        tables, t0 = [], time.perf_counter()
        if picker == "learned":
            from napari_cryossl.ops import run

            picks = run(iter_pick_with_model(volume, picker_path, threshold=args.picker_threshold))
            table = _with_kind(picks, "", tomo)
            table["kind"] = [KINDS[c - 1] for c in picks["class_number"]]
            out[picker] = (table, time.perf_counter() - t0)
            continue
        for kind in KINDS:
            d = 2 * radii[kind]
            if picker == "dog":
                kw = {REFINE_OPTION: False} if REFINE_OPTION else {}
                picks = pick_particles(volume, d, threshold=args.dog_threshold, **kw)
            elif picker == "dog-refined":
                picks = pick_particles(
                    volume, d, threshold=args.dog_threshold, **{REFINE_OPTION: True}
                )
            else:
                picks = match_template(
                    volume,
                    templates[kind],
                    diameter_px=d,
                    angular_step=args.angular_step,
                    device="cpu",
                )
            tables.append(_with_kind(picks, kind, tomo))
        out[picker] = (pd.concat(tables, ignore_index=True), time.perf_counter() - t0)
    return out


def class_blind(truth: pd.DataFrame, picks: pd.DataFrame, radii):
    """Scores with each pick given the kind of the nearest true particle of its tomogram."""
    from scipy.spatial import cKDTree

    from napari_cryossl.particles.picking_metrics import score_picks

    blind = picks.copy()
    for tomo, rows in picks.groupby("tomo_name"):
        t = truth[truth["tomo_name"] == tomo]
        if not len(t) or not len(rows):
            continue
        _, nearest = cKDTree(t[["z", "y", "x"]].to_numpy()).query(rows[["z", "y", "x"]].to_numpy())
        blind.loc[rows.index, "kind"] = t["kind"].to_numpy()[nearest]
    return score_picks(truth, blind, radii)


def bench_snr(snr: float, args, info: dict) -> dict:
    from napari_cryossl.particles.picking_metrics import score_picks
    from napari_cryossl.simulate import match_clutter, simulate_tomogram_details

    config = sim_config(snr, args.voxel_size)
    radii = kind_radii(config)
    templates = true_templates(config)
    pickers = ["dog"] + (["dog-refined"] if REFINE_OPTION else []) + ["template", "learned"]
    pickers = [p for p in pickers if p not in args.skip]
    picker_path, train_seconds = None, None
    if "learned" in pickers:
        picker_path, train_seconds = train_learned_picker(
            config, args, Path(tempfile.mkdtemp()) / f"picker_snr{snr:g}.pt"
        )
    truths, picks = [], {p: [] for p in pickers}
    seconds = {p: [] for p in pickers}
    clutter_flags = {p: [] for p in pickers}
    n_clutter = []
    for seed in range(args.tomograms):
        tomo = f"snr{snr:g}_seed{seed}"
        t0 = time.perf_counter()
        sim = simulate_tomogram_details(tuple(args.shape), args.particles, config, seed=seed)
        print(f"[{tomo}] simulated in {time.perf_counter() - t0:.1f} s, "
              f"{len(sim.clutter)} clutter objects", flush=True)
        truth = sim.particles[["x", "y", "z"]].copy()
        truth["kind"] = [KINDS[c - 1] for c in sim.particles["class_number"]]
        truth["tomo_name"] = tomo
        truths.append(truth)
        n_clutter.append(sim.clutter["kind"].value_counts().to_dict())
        for picker, (table, sec) in run_pickers(
            sim.volume, radii, templates, pickers, args, tomo, picker_path
        ).items():
            flags = np.zeros(len(table), dtype=bool)
            for kind in KINDS:
                sel = (table["kind"] == kind).to_numpy()
                zyx = table.loc[sel, ["z", "y", "x"]].to_numpy()
                flags[sel] = match_clutter(sim.clutter, zyx, margin=radii[kind]) >= 0
            picks[picker].append(table)
            clutter_flags[picker].append(flags)
            seconds[picker].append(sec)
            print(f"[{tomo}] {picker}: {len(table)} picks in {sec:.1f} s", flush=True)
    truth = pd.concat(truths, ignore_index=True)
    result = {
        "snr": snr,
        "tomograms": args.tomograms,
        "radii_px": radii,
        "clutter_per_tomogram": n_clutter,
        "pickers": {},
    }
    for picker in pickers:
        table = pd.concat(picks[picker], ignore_index=True)
        score = score_picks(truth, table, radii, on_clutter=np.concatenate(clutter_flags[picker]))
        entry = score.to_dict()
        entry["seconds_per_tomogram"] = float(np.mean(seconds[picker]))
        entry["seconds"] = seconds[picker]
        if picker == "learned":
            blind = class_blind(truth, table, radii)
            entry["class_blind"] = blind.to_dict()
            entry["train_seconds"] = train_seconds
            entry["clicks_per_kind"] = args.clicks
            print(f"SNR {snr:g} learned, class-blind: recall {blind.recall:.3f} "
                  f"precision {blind.precision:.3f}", flush=True)
        result["pickers"][picker] = entry
        print(f"SNR {snr:g} {picker}: F4 {score.fbeta:.3f} recall {score.recall:.3f} "
              f"precision {score.precision:.3f} picks/particle {score.picks_per_particle:.2f} "
              f"on clutter {score.fp_on_clutter}, {entry['seconds_per_tomogram']:.1f} s/tomogram",
              flush=True)
        print(score.table(), flush=True)
    return result


# --------------------------------------------------------------------------- classification


def classify(args, info: dict) -> dict:
    """Refined-DoG picks on one cluttered tomogram, classified into the kinds + junk."""
    import torch

    from napari_cryossl.analysis.baselines import FloorClassifier, simulated_ceiling
    from napari_cryossl.analysis.predict import JUNK_CLASS_NAME, predict
    from napari_cryossl.io import open_tomogram, particle_zyx, write_mrc
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.particles.picking import pick_particles
    from napari_cryossl.particles.picking_metrics import match_one_to_one
    from napari_cryossl.simulate import match_clutter, simulate_tomogram_details
    from napari_cryossl.train import FinetuneConfig, iter_finetune, run

    snr = args.classify_snr
    config = sim_config(snr, args.voxel_size, box_size=args.box_size)
    radii = kind_radii(config)
    sim = simulate_tomogram_details(tuple(args.shape), args.particles, config, seed=0)
    diameter = float(np.median([2 * r for r in radii.values()]))
    kw = {REFINE_OPTION: True} if REFINE_OPTION else {}
    t0 = time.perf_counter()
    picks = pick_particles(sim.volume, diameter, max_particles=int(1.5 * args.particles), **kw)
    pick_seconds = time.perf_counter() - t0
    # the answer of each pick: the kind of the particle within its radius (one-to-one,
    # nearest first), else junk ("not a particle")
    true_zyx = particle_zyx(sim.particles)
    true_class = sim.particles["class_number"].to_numpy()
    answer = np.full(len(picks), len(KINDS) + 1, dtype=np.int64)
    pzyx = particle_zyx(picks)
    for k, kind in enumerate(KINDS, start=1):
        sel = np.flatnonzero(true_class == k)
        free = np.flatnonzero(answer == len(KINDS) + 1)
        m = match_one_to_one(true_zyx[sel], pzyx[free], radii[kind])
        answer[free[m >= 0]] = k
    junk = len(KINDS) + 1
    on_clutter = match_clutter(sim.clutter, pzyx, margin=diameter / 2) >= 0
    rng = np.random.default_rng(0)
    labels = np.zeros(len(picks), dtype=np.int64)
    for c in range(1, junk + 1):
        cand = np.flatnonzero(answer == c)
        labels[rng.choice(cand, size=min(args.labels_per_class, len(cand)), replace=False)] = c
    names = {**{i + 1: n for i, n in enumerate(KINDS)}, junk: JUNK_CLASS_NAME}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tomogram.mrc"
        write_mrc(path, sim.volume, config.voxel_size)
        tomo = open_tomogram(path)
        table = picks.copy()
        table["class_number"] = labels
        data = SubtomogramSet.from_table(table, tomo, args.box_size)
        labelled = SubtomogramSet.from_table(table[labels > 0], tomo, args.box_size)
        torch.set_num_threads(1)
        cfg = FinetuneConfig(class_names=names, device="cpu", seed=0)
        t0 = time.perf_counter()
        run(iter_finetune(labelled, cfg, Path(tmp) / "classifier.pt"))
        finetune_seconds = time.perf_counter() - t0
        pred = predict(Path(tmp) / "classifier.pt", data, device="cpu").class_numbers
        boxes = data.load(np.arange(len(data)))
    test = labels == 0
    floor = FloorClassifier().fit(boxes[labels > 0], labels[labels > 0]).predict(boxes)
    t0 = time.perf_counter()
    tm = simulated_ceiling(boxes, config, n_rotations=args.ceiling_rotations, max_shift=4, chunk=8)
    ceiling_seconds = time.perf_counter() - t0
    best = tm.scores.max(axis=1)
    # junk below a score threshold chosen on the labelled picks (their best accuracy)
    lab = labels > 0
    cands = np.unique(best[lab])
    thresholds = np.concatenate([[-np.inf], cands])

    def with_junk(th):
        return np.where(best >= th, tm.class_numbers, junk)

    accs = [float((with_junk(t)[lab] == labels[lab]).mean()) for t in thresholds]
    threshold = float(thresholds[int(np.argmax(accs))])
    ceiling = with_junk(threshold)

    def report(pred_):
        ok = pred_ == answer
        per = {names[c]: float(ok[test & (answer == c)].mean()) for c in range(1, junk + 1)
               if (test & (answer == c)).any()}
        return {
            "accuracy": float(ok[test].mean()),
            "accuracy_particles": float(ok[test & (answer < junk)].mean()),
            "junk_recall": float(ok[test & (answer == junk)].mean()),
            "junk_on_clutter_recall": float(ok[test & (answer == junk) & on_clutter].mean())
            if (test & (answer == junk) & on_clutter).any()
            else float("nan"),
            "per_class": per,
        }

    result = {
        "snr": snr,
        "picker": "dog-refined" if REFINE_OPTION else "dog (no refinement option found)",
        "diameter_px": diameter,
        "box_size": args.box_size,
        "n_picks": int(len(picks)),
        "n_true": int(len(sim.particles)),
        "picks_per_class": {names[c]: int((answer == c).sum()) for c in range(1, junk + 1)},
        "junk_picks_on_clutter": int((on_clutter & (answer == junk)).sum()),
        "labels_per_class": args.labels_per_class,
        "n_test": int(test.sum()),
        "chance": 1.0 / junk,
        "majority": float(np.bincount(answer[test]).max() / test.sum()),
        "classifier": report(pred),
        "floor": report(floor),
        "ceiling": {**report(ceiling), "junk_threshold": threshold,
                    "n_rotations": args.ceiling_rotations},
        "seconds": {"pick": pick_seconds, "finetune": finetune_seconds,
                    "ceiling": ceiling_seconds},
        "finetune_config": {k: v for k, v in dataclasses.asdict(cfg).items()
                            if k in ("recipe", "epochs", "min_steps", "batch_size", "preset")},
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snrs", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--tomograms", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192])
    parser.add_argument("--particles", type=int, default=90)
    parser.add_argument("--voxel-size", type=float, default=15.0)
    parser.add_argument("--angular-step", type=float, default=40.0,
                        help="template matching's angular step, degrees")
    parser.add_argument("--dog-threshold", type=float, default=None,
                        help="DoG threshold in noise units (default: automatic)")
    parser.add_argument("--skip", nargs="*", default=[], help="pickers to leave out")
    parser.add_argument("--clicks", type=int, default=25,
                        help="learned picker: labelled particles per kind")
    parser.add_argument("--train-shape", type=int, nargs=3, default=[48, 256, 256])
    parser.add_argument("--train-particles", type=int, default=150)
    parser.add_argument("--picker-steps", type=int, default=None,
                        help="learned picker: training steps (default: the picker's)")
    parser.add_argument("--picker-threshold", type=float, default=None,
                        help="learned picker: lowest heatmap peak (default: the picker's)")
    parser.add_argument("--classify", action="store_true")
    parser.add_argument("--classify-only", action="store_true")
    parser.add_argument("--classify-snr", type=float, default=0.1)
    parser.add_argument("--box-size", type=int, default=24)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--ceiling-rotations", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = _device_line()
    info["command"] = "python benchmarks/bench_picking.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    info["refine_option"] = REFINE_OPTION
    info["shape"] = args.shape
    info["voxel_size"] = args.voxel_size
    info["particles_per_tomogram"] = args.particles
    info["kinds"] = list(KINDS)
    info["template_angular_step"] = args.angular_step
    info["dog_threshold"] = args.dog_threshold
    RESULTS.mkdir(exist_ok=True)
    if not args.classify_only:
        results = {**info, "snr": [bench_snr(s, args, info) for s in args.snrs]}
        out = args.out or RESULTS / "picking.json"
        out.write_text(json.dumps(results, indent=1, default=float))
        print(f"wrote {out}")
    if args.classify or args.classify_only:
        out = (args.out.with_name(args.out.stem + "_classify.json") if args.out
               else RESULTS / "picking_classify.json")
        out.write_text(json.dumps({**info, **classify(args, info)}, indent=1, default=float))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
