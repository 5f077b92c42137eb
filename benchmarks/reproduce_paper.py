"""Reproduce the experiment of Gupta et al. 2022 (Table 1, Fig. 8) on simulated data.

Random init vs MoCo vs SimCLR vs SwAV pretraining, then fine-tuning on 25/50/75/100 % of
the training labels, several runs each; mean ± std of test accuracy and a two-tailed
t-test of each method against random init.

Data as in the paper: 10 classes x 500 subtomograms of 32^3, crowded, missing wedge, CTF,
at SNR 0.05 and 0.03 (and an easier level for reference), split 60:20:20 (stratified).
Pretraining sees the whole training split without labels; fine-tuning sees the chosen
fraction of its labels; the validation split picks the best epoch; the test split is
only used for the reported accuracy.

Two configurations:
  paper    rb3d, 200 pretraining / 50 fine-tuning epochs, 5 runs (needs a GPU)
  reduced  the paper's data binned by 2 (16^3 at 20 Å), rb3d-small, 10/20 epochs,
           25/100 % labels, 3 runs sharing one pretraining per method: a few
           core-hours on a CPU (--methods random moco --snrs 0.5: half an hour)
  quick    random vs MoCo only, one SNR, 2 runs: a first answer in well under an hour on a CPU
  smoke    a tiny run that only proves the script works (CI)

Resumable: every run's result is appended to results.jsonl as it completes and skipped
when the script is started again. Outputs (in --out): results.jsonl, table.md,
accuracy_vs_labels_snr*.png, confusion_*.png, gradcam_*.png.

    python benchmarks/reproduce_paper.py --config reduced --out benchmarks/out/reduced
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

METHODS = ("random", "moco", "simclr", "swav")
#: Rows printed beside the CNN rows (not trained; see baseline_rows).
BASELINES = ("floor", "ceiling")


@dataclass(frozen=True)
class Config:
    name: str
    snrs: tuple[float, ...]
    n_classes: int
    per_class: int
    box_size: int
    preset: str
    pretrain_epochs: int
    finetune_epochs: int
    fractions: tuple[float, ...]
    runs: int
    batch_size: int = 16
    methods: tuple[str, ...] = METHODS
    voxel_size: float = 10.0  # Å; 20 with box 16 is the paper's 32^3 / 10 Å box binned by 2
    pretrain_runs: int | None = None  # independent pretrainings (None: one per run)
    finetune_lr: float | None = None  # None: the recipe's (paper: SGD 5e-4)
    head_init: str = "random"  # "probe": LP-FT, the head starts at a linear probe
    recipe: str = "default"  # fine-tuning recipe (train.RECIPES); "paper": Gupta et al.'s
    ceiling_rotations: int = 500  # rotations searched by the template-matching ceiling
    finetune_min_steps: int | None = None  # None: the recipe's
    # "structures": the ten built-in real complexes (napari_cryossl.simulate.structures), the
    # paper's kind of data; "shapes": the synthetic classes of equal mass and radius of
    # gyration (the hard case, and the data of every result before 2026-11-30).
    data: str = "structures"
    # Particle centres move by up to this many Å from the box centre: the paper's
    # simulator shifts by up to 3 voxels of 10 Å. (Before 2026-11-30 the reduced
    # configuration shifted by 3 voxels of 20 Å, twice the paper's.)
    max_shift_a: float = 30.0


CONFIGS = {
    "paper": Config(
        "paper",
        (0.05, 0.03, 0.5),
        10,
        500,
        32,
        "rb3d",
        200,
        50,
        (0.25, 0.5, 0.75, 1.0),
        5,
        recipe="paper",
    ),
    # The paper's data set (10 classes x 500, 60:20:20) with its 32^3 boxes at 10 Å binned
    # by 2 (16^3 at 20 Å: the same particles, 8x fewer voxels), rb3d-small, 10/20 epochs,
    # 25 % and 100 % of the labels, 3 fine-tuning runs sharing one pretraining per
    # method. Random init and MoCo (the paper's best) at one SNR take about half an hour
    # of one CPU core; every method at both SNRs about four core-hours.
    "reduced": Config(
        "reduced",
        (0.5, 0.05),
        10,
        500,
        16,
        "rb3d-small",
        10,
        20,
        (0.25, 1.0),
        3,
        voxel_size=20.0,
        pretrain_runs=1,
    ),
    "quick": Config(
        "quick",
        (0.1,),
        10,
        60,
        32,
        "rb3d-small",
        10,
        15,
        (0.25, 1.0),
        2,
        methods=("random", "moco"),
    ),
    "smoke": Config(
        "smoke",
        (0.5,),
        3,
        12,
        16,
        "rb3d-small",
        1,
        1,
        (1.0,),
        1,
        batch_size=8,
        ceiling_rotations=24,
        finetune_min_steps=0,
        data="shapes",  # 16^3 boxes at 10 Å are too small for the real complexes
    ),
}


def split_indices(labels: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)):
    """Stratified 60:20:20 split of indices into train, validation, test."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train : n_train + n_val].tolist()
        parts[2] += idx[n_train + n_val :].tolist()
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)


def label_subset(
    train_idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A stratified `fraction` of the training indices (at least one per class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[train_idx]):
        idx = train_idx[labels[train_idx] == c]
        k = max(1, int(round(fraction * len(idx))))
        chosen += rng.choice(idx, size=k, replace=False).tolist()
    return np.sort(np.array(chosen, dtype=np.int64))


def _done(results_path: Path) -> dict[str, dict]:
    if not results_path.exists():
        return {}
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def _append(results_path: Path, row: dict) -> None:
    with open(results_path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


#: Config fields that may differ between processes sharing one --out folder.
_SPLITTABLE = ("runs", "methods", "snrs")


def _check_same_experiment(cfg: Config, path: Path) -> None:
    """Refuse to add rows of another experiment (other epochs, lr, ...) to a results folder.

    A field missing from an older config.json had its current default then.
    """
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, like the file
    defaults = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
    differ = [k for k in now if k not in _SPLITTABLE and before.get(k, defaults.get(k)) != now[k]]
    if differ:
        detail = ", ".join(f"{k} {before.get(k, defaults.get(k))!r} -> {now[k]!r}" for k in differ)
        raise SystemExit(
            f"{path}: this folder holds another experiment ({detail}); use a new --out"
        )


def _folder_config(cfg: Config, path: Path) -> dict:
    """`cfg` as written to the folder's config.json: with the methods, SNRs and most runs of
    every process that has written into the folder, so the file describes all its rows."""
    now = asdict(cfg)
    if path.exists():
        before = json.loads(path.read_text())
        now["methods"] = [m for m in METHODS if m in {*before["methods"], *cfg.methods}]
        now["snrs"] = sorted({*before["snrs"], *cfg.snrs}, reverse=True)
        now["runs"] = max(before["runs"], cfg.runs)
    return now


def simulation_config(cfg: Config, snr: float | None):
    """The simulator's settings for `cfg` at `snr` (None: noise-free)."""
    from napari_cryossl.simulate import SimulationConfig

    return SimulationConfig(
        n_classes=cfg.n_classes,
        box_size=cfg.box_size,
        voxel_size=cfg.voxel_size,
        snr=snr,
        max_shift_px=cfg.max_shift_a / cfg.voxel_size,
        structures="builtin" if cfg.data == "structures" else None,
    )


def experiment_data(cfg: Config, snr: float | None, seed: int = 0):
    """The simulated set at `snr` and its split, as every run of `cfg` sees it.

    Returns:
        (all subtomograms with labels, the training split without labels, train, validation
        and test indices into the first).
    """
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import simulate_subtomograms

    sim = simulation_config(cfg, snr)
    volumes, labels = simulate_subtomograms(cfg.per_class, sim, seed=seed)
    all_data = SubtomogramSet.from_arrays(volumes, labels, voxel_size=sim.voxel_size)
    train_idx, val_idx, test_idx = split_indices(labels, seed)
    unlabelled_train = SubtomogramSet.from_arrays(
        volumes[train_idx], None, voxel_size=sim.voxel_size
    )
    return all_data, unlabelled_train, train_idx, val_idx, test_idx


def _label_seed(seed: int, run_i: int, fraction: float) -> int:
    return seed + 1000 * run_i + int(100 * fraction)


def baseline_rows(cfg: Config, all_data, train_idx, test_idx, snr, seed, done, results_path):
    """Floor and ceiling beside every CNN row, on the same data.

    floor: rotation-invariant radial features + logistic regression fitted on exactly the
    labelled subset each fine-tuning run gets (one row per fraction and run); ceiling:
    template matching with the simulator's true templates on the test split (one row).
    """
    from napari_cryossl.analysis.baselines import floor_accuracy, simulated_ceiling

    labels = np.asarray(all_data.class_numbers)
    boxes = None
    for fraction in cfg.fractions:
        for run_i in range(cfg.runs):
            key = f"floor|{snr}|{fraction}|{run_i}"
            if key in done:
                continue
            if boxes is None:
                boxes = all_data.load(np.arange(len(all_data)))
            chosen = label_subset(train_idx, labels, fraction, seed=_label_seed(seed, run_i, fraction))
            acc = floor_accuracy(boxes[chosen], labels[chosen], boxes[test_idx], labels[test_idx])
            row = {"key": key, "stage": "floor", "snr": snr, "method": "floor",
                   "fraction": fraction, "run": run_i, "n_labels": int(len(chosen)),
                   "test_accuracy": acc, "confusion": None, "seconds": 0.0}
            _append(results_path, row)
            done[key] = row
    key = f"ceiling|{snr}"
    if key not in done and cfg.ceiling_rotations > 0:
        if boxes is None:
            boxes = all_data.load(np.arange(len(all_data)))
        t0 = time.perf_counter()
        result = simulated_ceiling(
            boxes[test_idx], simulation_config(cfg, snr), n_rotations=cfg.ceiling_rotations
        )
        acc = float((result.class_numbers == labels[test_idx]).mean())
        row = {"key": key, "stage": "ceiling", "snr": snr, "method": "ceiling",
               "test_accuracy": acc, "n_rotations": cfg.ceiling_rotations,
               "seconds": time.perf_counter() - t0}
        _append(results_path, row)
        done[key] = row
        print(f"snr {snr} ceiling (template matching): {acc:.3f}", flush=True)


def run_experiment(cfg: Config, out: Path, device: str = "auto", seed: int = 0) -> list[dict]:
    """Run (or resume) every pretraining and fine-tuning run of `cfg`; return all rows."""
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.train import (
        FinetuneConfig,
        PretrainConfig,
        iter_finetune,
        iter_pretrain,
        run,
    )

    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = _done(results_path)
    _check_same_experiment(cfg, out / "config.json")
    (out / "config.json").write_text(json.dumps(_folder_config(cfg, out / "config.json"), indent=2))

    for snr in cfg.snrs:
        all_data, unlabelled_train, train_idx, val_idx, test_idx = experiment_data(cfg, snr, seed)
        labels = np.asarray(all_data.class_numbers)
        test = all_data.subset(test_idx)

        baseline_rows(cfg, all_data, train_idx, test_idx, snr, seed, done, results_path)
        for method in cfg.methods:
            for run_i in range(cfg.runs):
                encoder = None
                # With pretrain_runs < runs, fine-tuning runs share pretrained encoders.
                pre_i = run_i % (cfg.pretrain_runs or cfg.runs)
                if method != "random":
                    encoder = out / f"encoder_snr{snr}_{method}_run{pre_i}.pt"
                    if not encoder.exists() or f"pretrain|{snr}|{method}|{pre_i}" not in done:
                        t0 = time.perf_counter()
                        p_cfg = PretrainConfig(
                            method=method,
                            preset=cfg.preset,
                            epochs=cfg.pretrain_epochs,
                            batch_size=cfg.batch_size,
                            device=device,
                            seed=seed + pre_i,
                        )
                        epoch_losses = [
                            status.loss
                            for status in iter_pretrain(
                                unlabelled_train, p_cfg, encoder, resume=encoder.exists()
                            )
                            if status.event == "epoch"
                        ]
                        row = {
                            "key": f"pretrain|{snr}|{method}|{pre_i}",
                            "stage": "pretrain",
                            "snr": snr,
                            "method": method,
                            "run": pre_i,
                            "epoch_losses": epoch_losses,
                            "final_loss": epoch_losses[-1] if epoch_losses else None,
                            "seconds": time.perf_counter() - t0,
                        }
                        _append(results_path, row)
                        done[row["key"]] = row
                for fraction in cfg.fractions:
                    key = f"finetune|{snr}|{method}|{fraction}|{run_i}"
                    if key in done:
                        continue
                    t0 = time.perf_counter()
                    chosen = label_subset(
                        train_idx, labels, fraction, seed=_label_seed(seed, run_i, fraction)
                    )
                    # The labelled training subset and the validation split go in together;
                    # fine-tuning holds out a stratified validation part of the same size
                    # as the validation split for choosing the best epoch.
                    pool = np.concatenate([chosen, val_idx])
                    f_cfg = FinetuneConfig(
                        recipe=cfg.recipe,
                        preset=cfg.preset if encoder is None else None,
                        epochs=cfg.finetune_epochs,
                        min_steps=cfg.finetune_min_steps,
                        batch_size=cfg.batch_size if cfg.recipe == "paper" else None,
                        val_fraction=len(val_idx) / len(pool),
                        lr=cfg.finetune_lr,
                        head_init=cfg.head_init,
                        device=device,
                        seed=seed + run_i,
                    )
                    clf = out / f"classifier_snr{snr}_{method}_{fraction}_run{run_i}.pt"
                    run(iter_finetune(all_data.subset(pool), f_cfg, clf, init=encoder))
                    pred = predict(clf, test, device=device)
                    truth = labels[test_idx]
                    acc = float((pred.class_numbers == truth).mean())
                    confusion = np.zeros((cfg.n_classes, cfg.n_classes), dtype=int)
                    np.add.at(confusion, (truth - 1, pred.class_numbers - 1), 1)
                    row = {
                        "key": key,
                        "stage": "finetune",
                        "snr": snr,
                        "method": method,
                        "fraction": fraction,
                        "run": run_i,
                        "n_labels": int(len(chosen)),
                        "test_accuracy": acc,
                        "confusion": confusion.tolist(),
                        "seconds": time.perf_counter() - t0,
                    }
                    _append(results_path, row)
                    done[key] = row
                    print(
                        f"snr {snr} {method:>6} {fraction:.0%} run {run_i}: test accuracy {acc:.3f}",
                        flush=True,
                    )
        gradcam_figure(cfg, out, snr, test)
    # Every finished row on disk: processes that split the methods or SNRs between them
    # (--methods/--snrs into one --out) each summarise all of them.
    return list(_done(results_path).values())


def gradcam_figure(cfg: Config, out: Path, snr: float, test) -> Path | None:
    """Grad-CAM central slices, random init vs the best pretraining (the paper's Fig. 8).

    One test particle per class (up to 5): the input's central XY slice, then the heatmap
    of its true class from the run-0 classifier fine-tuned on all labels from random
    weights and from the pretrained encoder with the best mean accuracy, among every
    method with finished runs in ``out``'s results (not only this invocation's).
    """
    from napari_cryossl.analysis.saliency import gradcam

    top = max(cfg.fractions)
    accuracies: dict[str, list[float]] = {}
    for r in _done(out / "results.jsonl").values():
        if r.get("stage") == "finetune" and (r["snr"], r["fraction"]) == (snr, top):
            accuracies.setdefault(r["method"], []).append(r["test_accuracy"])
    pretrained = [m for m in METHODS if m != "random" and m in accuracies]
    if "random" not in accuracies or not pretrained:
        return None
    best = max(pretrained, key=lambda m: float(np.mean(accuracies[m])))
    paths = {m: out / f"classifier_snr{snr}_{m}_{top}_run0.pt" for m in ("random", best)}
    if not all(p.exists() for p in paths.values()):
        return None
    labels = test.class_numbers
    rows = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:5]]
    volumes = test.load(rows)
    cams = {m: gradcam(p, volumes, target=labels[rows], device="cpu") for m, p in paths.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = cfg.box_size // 2
    fig, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), dpi=110, squeeze=False)
    for r, i in enumerate(rows):
        axes[r, 0].imshow(volumes[r, mid], cmap="gray")
        axes[r, 0].set_ylabel(f"class {labels[i]}")
        for c, m in enumerate(("random", best), start=1):
            axes[r, c].imshow(volumes[r, mid], cmap="gray")
            axes[r, c].imshow(cams[m][r, mid], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input (central XY)")
    axes[0, 1].set_title("random init")
    axes[0, 2].set_title(f"{best} pretrained")
    fig.suptitle(f"Grad-CAM, SNR {snr}, {top:.0%} labels")
    fig.tight_layout()
    path = out / f"gradcam_snr{snr}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summarise(rows: list[dict], out: Path) -> str:
    """Table like the paper's (mean ± std, p-value vs random init) and plots."""
    from scipy import stats

    fin = [r for r in rows if r.get("stage") == "finetune"]
    floors = [r for r in rows if r.get("method") == "floor"]
    ceilings = {r["snr"]: r["test_accuracy"] for r in rows if r.get("method") == "ceiling"}
    snrs = sorted({r["snr"] for r in fin}, key=lambda v: -np.inf if v is None else -v)
    fractions = sorted({r["fraction"] for r in fin})
    methods = [m for m in METHODS if any(r["method"] == m for r in fin)]

    def floor_of(snr, fraction):
        return np.array(
            [r["test_accuracy"] for r in floors if (r["snr"], r["fraction"]) == (snr, fraction)]
        )

    def accs(snr, method, fraction):
        return np.array(
            [
                r["test_accuracy"]
                for r in fin
                if (r["snr"], r["method"], r["fraction"]) == (snr, method, fraction)
            ]
        )

    lines = []
    for snr in snrs:
        lines.append(
            f"\n**SNR {snr}** (test accuracy %, mean ± std over runs; p: two-tailed Welch t-test vs random init)\n"
        )
        lines.append("| init | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for method in methods:
            cells = []
            for f in fractions:
                a = accs(snr, method, f)
                if len(a) == 0:
                    cells.append("–")
                    continue
                cell = f"{100 * a.mean():.1f} ± {100 * a.std(ddof=1) if len(a) > 1 else 0:.1f}"
                base = accs(snr, "random", f)
                if method != "random" and len(a) > 1 and len(base) > 1:
                    p = stats.ttest_ind(a, base, equal_var=False).pvalue
                    cell += f" (p={p:.3f})"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        cells = []
        for f in fractions:
            a = floor_of(snr, f)
            cells.append(f"{100 * a.mean():.1f} ± {100 * a.std(ddof=1) if len(a) > 1 else 0:.1f}"
                         if len(a) else "–")
        lines.append("| floor (radial features + logistic regression) | " + " | ".join(cells) + " |")
        if snr in ceilings:
            cell = f"{100 * ceilings[snr]:.1f}"
            lines.append("| ceiling (template matching, true templates) | "
                         + " | ".join([cell] * len(fractions)) + " |")
        below = [
            f"{m} at {f:.0%}"
            for m in methods
            for f in fractions
            if len(accs(snr, m, f)) and len(floor_of(snr, f))
            and accs(snr, m, f).mean() < floor_of(snr, f).mean()
        ]
        if below:
            lines.append(f"\n**Below the floor:** {', '.join(below)}.")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    _plot(fin, snrs, fractions, methods, accs, out)
    return table


def _plot(fin, snrs, fractions, methods, accs, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for snr in snrs:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        for method in methods:
            means = [
                100 * accs(snr, method, f).mean() if len(accs(snr, method, f)) else np.nan
                for f in fractions
            ]
            stds = [
                100 * accs(snr, method, f).std(ddof=1) if len(accs(snr, method, f)) > 1 else 0.0
                for f in fractions
            ]
            ax.errorbar(
                [100 * f for f in fractions], means, yerr=stds, marker="o", capsize=3, label=method
            )
        ax.set_xlabel("labelled fraction of the training split (%)")
        ax.set_ylabel("test accuracy (%), mean ± std over runs")
        ax.set_title(f"SNR {snr}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"accuracy_vs_labels_snr{snr}.png")
        plt.close(fig)
        # confusion matrix of the best method at 100 % labels (summed over runs)
        best = max(
            methods,
            key=lambda m: (
                accs(snr, m, max(fractions)).mean() if len(accs(snr, m, max(fractions))) else -1
            ),
        )
        mats = [
            np.array(r["confusion"])
            for r in fin
            if (r["snr"], r["method"], r["fraction"]) == (snr, best, max(fractions))
        ]
        if mats:
            mat = np.sum(mats, axis=0)
            fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
            im = ax.imshow(
                mat / np.maximum(mat.sum(1, keepdims=True), 1), cmap="viridis", vmin=0, vmax=1
            )
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.set_title(f"{best}, SNR {snr}, {max(fractions):.0%} labels")
            fig.colorbar(im, ax=ax, fraction=0.046)
            fig.tight_layout()
            fig.savefig(out / f"confusion_snr{snr}.png")
            plt.close(fig)


def _snr(text: str) -> float | None:
    return None if text.lower() in ("inf", "none") else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="reduced")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=None, help="override the number of runs")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument(
        "--snrs", nargs="+", type=_snr, default=None, help="override the SNRs ('inf': noise-free)"
    )
    parser.add_argument(
        "--fractions", nargs="+", type=float, default=None, help="override the label fractions"
    )
    parser.add_argument(
        "--recipe", choices=("default", "paper"), default=None, help="fine-tuning recipe"
    )
    parser.add_argument(
        "--data",
        choices=("shapes", "structures"),
        default=None,
        help="the ten built-in real complexes (default) or synthetic shapes of equal mass",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--finetune-lr", type=float, default=None, help="override the fine-tuning learning rate"
    )
    parser.add_argument(
        "--head-init",
        choices=("random", "probe"),
        default=None,
        help="start the classifier's last layer at random (the paper) or at a linear probe "
        "on the frozen encoder (LP-FT), for every method including random init",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="override the configuration's pretraining epochs (a longer pretraining "
        "stands for what a GPU affords)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="override the configuration's fine-tuning epochs (the default recipe on a "
        "GPU fine-tunes for 120)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    if args.runs:
        cfg = replace(cfg, runs=args.runs)
    if args.methods:
        cfg = replace(cfg, methods=tuple(args.methods))
    if args.snrs:
        cfg = replace(cfg, snrs=tuple(args.snrs))
    if args.fractions:
        cfg = replace(cfg, fractions=tuple(args.fractions))
    if args.recipe:
        cfg = replace(cfg, recipe=args.recipe)
    if args.data:
        cfg = replace(cfg, data=args.data)
    if args.finetune_lr:
        cfg = replace(cfg, finetune_lr=args.finetune_lr)
    if args.head_init:
        cfg = replace(cfg, head_init=args.head_init)
    if args.pretrain_epochs:
        cfg = replace(cfg, pretrain_epochs=args.pretrain_epochs)
    if args.finetune_epochs:
        cfg = replace(cfg, finetune_epochs=args.finetune_epochs)
    out = args.out or Path("benchmarks/out") / cfg.name
    rows = run_experiment(cfg, out, device=args.device, seed=args.seed)
    print(summarise(rows, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
