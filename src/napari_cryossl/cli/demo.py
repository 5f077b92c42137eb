"""`cryossl demo`: the whole pipeline on built-in simulated data, with a summary.

simulate a crowded tomogram -> DoG picking -> contrastive pretraining on every pick ->
label a few picks per class (from the simulator's ground truth, as a person would by
clicking) -> fine-tune -> predict every pick -> Grad-CAM pasted into tomogram space.
The summary reports picking recall/precision and classification accuracy against the
ground truth on the picks nobody labelled, and the wall time of each stage.

Picks that match no true particle are junk. The simulated person labels a few of them
too, as the class ``predict.JUNK_CLASS_NAME`` ("not a particle"), which gets the last
class number (one more than the complexes); the classifier learns it like any other
class, and the summary says how many of the other false picks it flags as junk and how
confident it is about the false picks it gives a particle class.

The particles are real macromolecular complexes from the built-in set
(docs/simulator.md), and the classes carry their names. Two sizes: `cpu` (four complexes
of similar size in a binned tomogram, a minute or two on a laptop) and `gpu` (six
complexes at 10 Å in the paper's 32^3 boxes, SNR 0.05).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DemoPreset:
    """Size of a demo run."""

    tomogram_shape: tuple[int, int, int]
    n_particles: int
    n_classes: int
    snr: float
    box_size: int
    model_preset: str
    pretrain_epochs: int
    finetune_epochs: int
    labels_per_class: int
    batch_size: int
    method: str = "moco"
    ssl_options: dict | None = None
    voxel_size: float = 10.0
    particle_diameter_a: float = 150.0
    finetune_min_steps: int | None = None  # None: the fine-tuning recipe's
    finetune_batch_size: int | None = None  # None: the fine-tuning recipe's
    # False picks labelled "not a particle" (the last class); None: labels_per_class, 0: none.
    junk_labels: int | None = None
    # Built-in complex names, "builtin" (all ten), or None for the synthetic shapes.
    structures: str | tuple[str, ...] | None = None


#: The CPU demo's complexes: 120–175 Å across, so one picking diameter finds them all and
#: size alone does not tell them apart (masses 160–850 kDa still differ).
CPU_STRUCTURES = ("TRiC", "apoferritin", "RuvAB", "GluA3-NTD")
#: The GPU demo adds two smaller ones (110–175 Å). With all ten (75–280 Å) one DoG
#: diameter found 56 % of the particles (ribosomes 25 %); with these six 77 % at SNR 0.05.
GPU_STRUCTURES = CPU_STRUCTURES + ("GltPh", "TCR-pMHC")

PRESETS = {
    # A binned tomogram (20 Å voxels) of four real complexes (6–9 voxels across) in 16^3
    # boxes: what a first look at real data is like, and what a 2-core CPU classifies in
    # about a minute with the default fine-tuning recipe (docs/benchmarks.md, "cryossl demo").
    "cpu": DemoPreset(
        tomogram_shape=(48, 192, 192),
        n_particles=160,
        n_classes=4,
        snr=0.5,
        box_size=16,
        model_preset="rb3d-small",
        pretrain_epochs=8,
        finetune_epochs=20,
        labels_per_class=10,
        batch_size=16,
        # ~120 pretraining steps: with the paper's m = 0.999 the key encoder would barely
        # leave its random start, so the demo uses m = 0.99.
        ssl_options={"momentum": 0.99},
        voxel_size=20.0,
        particle_diameter_a=150.0,
        finetune_min_steps=800,
        structures=CPU_STRUCTURES,
    ),
    "gpu": DemoPreset(
        tomogram_shape=(128, 512, 512),
        n_particles=1200,
        n_classes=len(GPU_STRUCTURES),
        snr=0.05,
        box_size=32,
        model_preset="rb3d-small",
        pretrain_epochs=50,
        finetune_epochs=30,
        labels_per_class=10,
        batch_size=32,
        structures=GPU_STRUCTURES,
        particle_diameter_a=140.0,
    ),
}


@dataclass
class DemoResult:
    """What the demo measured, and where it wrote its files."""

    out: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    n_true: int = 0
    n_picked: int = 0
    recall: float = 0.0
    precision: float = 0.0
    n_labelled: int = 0
    accuracy: float = float("nan")
    floor: float = float("nan")
    chance: float = float("nan")
    class_names: list[str] = field(default_factory=list)
    particle_diameter_a: float = float("nan")
    per_class: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    # Junk ("not a particle", class number ``junk_class``; 0 when the demo labels none).
    junk_class: int = 0
    n_junk_labelled: int = 0
    n_false_picks: int = 0  # unlabelled picks that match no true particle
    n_flagged_junk: int = 0  # ... of which predicted "not a particle"
    floor_flagged_junk: int = 0  # ... of which the floor calls "not a particle"
    false_pick_confidence: float = float("nan")  # mean, over false picks given a particle class
    particle_confidence: float = float("nan")  # mean, over true particles (unlabelled)
    temperature: float = 1.0  # the classifier's calibrated temperature
    calibration_note: str = "fitted on the validation labels"  # or why T = 1 was kept
    ece: float = float("nan")  # expected calibration error on the unlabelled picks (15 bins)

    def summary(self) -> str:
        lines = [
            f"napari-cryossl demo -> {self.out}",
            f"  picking: {self.n_picked} picks, recall {self.recall:.1%} of {self.n_true} true "
            f"particles, precision {self.precision:.1%}",
            f"  labels: {self.n_labelled} picks labelled from the ground truth"
            + (f" ({self.n_junk_labelled} false picks as junk)" if self.n_junk_labelled else ""),
            f"  accuracy on the unlabelled matched picks: {self.accuracy:.1%} "
            f"(chance {self.chance:.1%}; floor {self.floor:.1%}: logistic regression on "
            "rotation-invariant radial features fitted on the same labels)",
        ]
        if self.per_class:
            lines.append(
                "  per class: "
                + ", ".join(f"{name} {acc:.0%}" for name, acc in self.per_class.items())
            )
        lines += self._junk_lines()
        lines += ["  time per stage:"]
        lines += [f"    {name:<10} {sec:7.1f} s" for name, sec in self.stage_seconds.items()]
        lines.append(f"    {'total':<10} {sum(self.stage_seconds.values()):7.1f} s")
        lines += [f"  {key}: {path}" for key, path in self.files.items()]
        return "\n".join(lines)


    def _junk_lines(self) -> list[str]:
        from napari_cryossl.analysis.predict import JUNK_CLASS_NAME

        lines = []
        if self.junk_class:
            n, flagged = self.n_false_picks, self.n_flagged_junk
            lines.append(
                f'  false picks: {flagged} of {n} unlabelled false picks flagged "{JUNK_CLASS_NAME}" '
                f"(class {self.junk_class}, {self.n_junk_labelled} labelled; floor "
                f"{self.floor_flagged_junk} of {n})"
            )
        if self.n_false_picks:
            lines.append(
                f"  confidence: {self.false_pick_confidence:.2f} on average for the "
                f"{self.n_false_picks - self.n_flagged_junk} false picks given a particle class, "
                f"{self.particle_confidence:.2f} for the true particles"
            )
        if np.isfinite(self.ece):
            lines.append(
                f"  calibration: temperature {self.temperature:.2f} ({self.calibration_note}); "
                f"expected calibration error on the unlabelled picks {self.ece:.3f}"
            )
        return lines


def _run(operation, desc: str, verbose: bool):
    """Drive an operation; with ``verbose``, show its progress (a bar on a terminal, a
    line every few seconds in a log). Returns its result."""
    if verbose:
        import os

        from napari_cryossl.cli.console import run_operation

        # a line every 10 s in a log (the demo's stages take tens of seconds)
        interval = None if "CRYOSSL_LOG_INTERVAL" in os.environ else 10.0
        return run_operation(operation, desc, interval=interval)
    from napari_cryossl.ops import run

    return run(operation)


def match_picks(true_zyx: np.ndarray, picked_zyx: np.ndarray, radius: float) -> np.ndarray:
    """For each pick, the index of the true particle within `radius` voxels, or -1.

    One-to-one: each true particle is matched to its closest pick only.
    """
    from scipy.spatial import cKDTree

    match = np.full(len(picked_zyx), -1, dtype=np.int64)
    if len(true_zyx) == 0 or len(picked_zyx) == 0:
        return match
    dist, idx = cKDTree(true_zyx).query(picked_zyx, distance_upper_bound=radius)
    order = np.argsort(dist)
    taken: set[int] = set()
    for i in order:
        if np.isfinite(dist[i]) and idx[i] not in taken:
            match[i] = idx[i]
            taken.add(int(idx[i]))
    return match


def default_folder() -> Path:
    """Where `cryossl demo` writes without --out: the user cache folder (never the
    current folder, which may be a source checkout), e.g. ~/.cache/napari-cryossl/demo."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cryossl")) / "demo"


def _unused_folder(folder: Path) -> Path:
    """``folder`` while it is empty or absent, else ``folder-2``, ``folder-3``...: each demo
    run keeps its own files."""
    candidate, n = folder, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def run_demo(
    out: Path | str | None,
    *,
    preset: str | None = None,
    device: str = "auto",
    seed: int = 0,
    gui: bool = False,
    verbose: bool = True,
    preset_overrides: dict | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Run the whole pipeline on simulated data and print a summary.

    Args:
        out: folder for every file the demo writes (None: ``default_folder()``).
        preset: "cpu" or "gpu"; default "gpu" when CUDA is available, else "cpu".
        device: "auto", "cpu", "cuda"...
        seed: makes the run repeatable.
        gui: open napari with every layer at the end.
        verbose: print the summary.
        preset_overrides: fields of the preset to change (tests use a tiny run).
        overwrite: replace the files of an earlier demo in ``out`` (False: refuse, before
            any work). Without ``out`` each run gets a folder of its own.
    """
    import dataclasses

    from napari_cryossl.analysis.baselines import FloorClassifier
    from napari_cryossl.analysis.predict import JUNK_CLASS_NAME, PredictSettings
    from napari_cryossl.analysis.saliency import GradcamSettings
    from napari_cryossl.io import particle_zyx, read_particles, write_particles
    from napari_cryossl.nn.checkpoints import load_checkpoint
    from napari_cryossl.nn.devices import select_device
    from napari_cryossl.ops import run
    from napari_cryossl.ops.gradcam import gradcam
    from napari_cryossl.ops.particles import load_particles
    from napari_cryossl.ops.pick import pick
    from napari_cryossl.ops.predict import predict
    from napari_cryossl.ops.simulate import simulate
    from napari_cryossl.ops.train import finetune, pretrain
    from napari_cryossl.particles.picking import PickSettings
    from napari_cryossl.simulate import SimulationConfig, class_names
    from napari_cryossl.train import FinetuneConfig, PretrainConfig

    torch_device = select_device(device)
    if preset is None:
        preset = "gpu" if torch_device.type == "cuda" else "cpu"
    cfg = PRESETS[preset]
    if preset_overrides:
        cfg = dataclasses.replace(cfg, **preset_overrides)
    from napari_cryossl.io import refuse_to_replace

    if out is None:
        out = _unused_folder(default_folder())
    out = Path(out)
    refuse_to_replace([out], overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if verbose:  # first, so a user knows where to look while it runs
        print(f"napari-cryossl demo ({preset} preset) -> {out}", flush=True)
    result = DemoResult(out=out)
    rng = np.random.default_rng(seed)

    def stage(name: str):
        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()
                if verbose:
                    print(f"[{name}] ...", flush=True)

            def __exit__(self, *exc):
                result.stage_seconds[name] = time.perf_counter() - self.t0

        return _Timer()

    # 1. simulate -----------------------------------------------------------------------
    with stage("simulate"):
        sim_cfg = SimulationConfig(
            n_classes=cfg.n_classes,
            box_size=cfg.box_size,
            snr=cfg.snr,
            voxel_size=cfg.voxel_size,
            particle_diameter_a=cfg.particle_diameter_a,
            structures=cfg.structures,
        )
        result.particle_diameter_a = float(cfg.particle_diameter_a)
        result.class_names = class_names(cfg.n_classes, cfg.structures)
        # consent to replace an earlier demo's files was asked above
        paths = run(
            simulate(out, sim_cfg, n_per_class=0, tomogram_shape=cfg.tomogram_shape,
                     n_tomogram_particles=cfg.n_particles, seed=seed, overwrite=True)
        )
        tomo_path = paths["tomogram"]
        truth = read_particles(paths["tomogram_particles_star"])
        result.files["tomogram"] = tomo_path
        result.files["ground truth"] = paths["tomogram_particles_star"]

    # 2. pick ---------------------------------------------------------------------------
    with stage("pick"):
        diameter_px = sim_cfg.particle_diameter_px
        picked = run(
            pick(tomo_path, diameter_px=diameter_px, out=out / "picks.star", overwrite=True,
                 settings=PickSettings(max_particles=int(cfg.n_particles * 1.5)))
        )
        picks, tomo = picked.table, picked.tomogram
        true_zyx = particle_zyx(truth)
        match = match_picks(true_zyx, particle_zyx(picks), radius=diameter_px / 2)
        result.n_true = len(truth)
        result.n_picked = len(picks)
        result.recall = float((match >= 0).sum()) / max(len(truth), 1)
        result.precision = float((match >= 0).sum()) / max(len(picks), 1)
        result.files["picks"] = out / "picks.star"

    true_class = np.where(match >= 0, truth["class_number"].to_numpy()[np.maximum(match, 0)], 0)

    # 3. pretrain on every pick (no labels) ---------------------------------------------
    with stage("pretrain"):
        data = load_particles([(picks, tomo)], box_size=cfg.box_size)
        p_cfg = PretrainConfig(
            method=cfg.method,
            ssl_options=cfg.ssl_options,
            preset=cfg.model_preset,
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.batch_size,
            device=device,
            seed=seed,
        )
        encoder_path = out / "encoder.pt"
        _run(pretrain(data, p_cfg, encoder_path, overwrite=True), f"pretrain {cfg.method}",
             verbose)
        result.files["encoder"] = encoder_path

    # 4. a person labels a few picks per class (here: from the ground truth) -------------
    labels = np.zeros(len(picks), dtype=np.int64)
    for c in range(1, cfg.n_classes + 1):
        candidates = np.flatnonzero(true_class == c)
        chosen = rng.choice(
            candidates, size=min(cfg.labels_per_class, len(candidates)), replace=False
        )
        labels[chosen] = c
    # ... and a few false picks as "not a particle", the last class (docstring above)
    n_junk = cfg.labels_per_class if cfg.junk_labels is None else int(cfg.junk_labels)
    false_picks = np.flatnonzero(match < 0)
    if n_junk > 0 and len(false_picks):
        result.junk_class = cfg.n_classes + 1
        chosen = rng.choice(false_picks, size=min(n_junk, len(false_picks)), replace=False)
        labels[chosen] = result.junk_class
        result.n_junk_labelled = len(chosen)
        result.class_names.append(JUNK_CLASS_NAME)
    result.n_labelled = int((labels > 0).sum())
    labelled_table = picks.copy()
    labelled_table["class_number"] = labels
    labelled_table["source"] = "manual"
    write_particles(labelled_table, out / "labels.star", voxel_size=tomo.voxel_size)

    # 5. fine-tune --------------------------------------------------------------------------
    with stage("finetune"):
        f_cfg = FinetuneConfig(
            epochs=cfg.finetune_epochs,
            min_steps=cfg.finetune_min_steps,
            batch_size=cfg.finetune_batch_size,
            class_names={i + 1: name for i, name in enumerate(result.class_names)},
            device=device,
            seed=seed,
        )
        classifier_path = out / "classifier.pt"
        _run(
            finetune([(labelled_table, tomo)], f_cfg, classifier_path, init=encoder_path,
                     overwrite=True),
            "finetune",
            verbose,
        )
        result.files["classifier"] = classifier_path

    # 6. predict every pick -----------------------------------------------------------------
    with stage("predict"):
        pred = run(predict(classifier_path, data, settings=PredictSettings(device=device)))
        pred = pred.predictions
        evaluate = (true_class > 0) & (labels == 0)
        # the right answer for every pick: its complex, or "not a particle" (0 without junk)
        answer = np.where(match >= 0, true_class, result.junk_class)
        correct = pred.class_numbers == answer
        result.accuracy = float(correct[evaluate].mean())
        unlabelled_false = (match < 0) & (labels == 0)
        for c, name in enumerate(result.class_names, start=1):
            mask = (labels == 0) & (answer == c)
            if mask.any():
                result.per_class[name] = float(correct[mask].mean())
        # The floor on exactly the same labels (junk included) and picks (docs/benchmarks.md).
        boxes = data.load(np.arange(len(data)))
        floor = FloorClassifier().fit(boxes[labels > 0], labels[labels > 0])
        floor_pred = floor.predict(boxes)
        result.floor = float((floor_pred[evaluate] == true_class[evaluate]).mean())
        result.chance = 1.0 / len(result.class_names)
        # junk: false picks flagged, and how sure the classifier is about the others
        result.n_false_picks = int(unlabelled_false.sum())
        is_junk = pred.class_numbers == result.junk_class
        result.n_flagged_junk = int((is_junk & unlabelled_false).sum()) if result.junk_class else 0
        result.floor_flagged_junk = (
            int(((floor_pred == result.junk_class) & unlabelled_false).sum())
            if result.junk_class
            else 0
        )
        missed = unlabelled_false & ~is_junk
        if missed.any():
            result.false_pick_confidence = float(pred.confidence[missed].mean())
        if evaluate.any():
            result.particle_confidence = float(pred.confidence[evaluate].mean())
        result.temperature = float(pred.temperature)
        calibration = load_checkpoint(classifier_path).get("calibration") or {}
        result.calibration_note = calibration.get("note", result.calibration_note)
        scored = (labels == 0) & (answer > 0)  # every unlabelled pick with a right answer
        if scored.any():
            from napari_cryossl.train.calibration import expected_calibration_error

            result.ece = expected_calibration_error(pred.confidence[scored], correct[scored])
        predicted = picks.copy()
        predicted["class_number"] = pred.class_numbers
        predicted["probability"] = pred.confidence
        write_particles(predicted, out / "predictions.star", voxel_size=tomo.voxel_size)
        result.files["predictions"] = out / "predictions.star"
        result.files["annotations"] = save_session(
            tomo_path, picks, labels, pred.class_numbers, pred.confidence, result.class_names
        )

    # 7. Grad-CAM, pasted into the tomogram ---------------------------------------------------
    with stage("gradcam"):
        (heat_path,) = run(
            gradcam(classifier_path, data, out, settings=GradcamSettings(device=device),
                    overwrite=True)
        )
        result.files["gradcam"] = heat_path

    if verbose:
        print(result.summary(), flush=True)
    if gui:
        _show_in_napari(result)
    return result


def save_session(tomogram_path, picks, labels, predicted, probability, class_names) -> Path:
    """Write the demo's classes, picks, labels and predictions into the tomogram's
    annotation store (``<stem>.cryossl.star`` beside it), the file the napari dock opens.

    With the encoder and classifier saved in the same folder, the dock then starts where
    the demo ended: every section works without further setup. An older store there is
    replaced (the demo rewrites every file in its folder).
    """
    from napari_cryossl.io import particle_zyx
    from napari_cryossl.particles.annotations import AnnotationStore, store_path_for

    path = store_path_for(Path(tomogram_path))
    path.unlink(missing_ok=True)
    store = AnnotationStore.for_tomogram(tomogram_path)
    for name in class_names:
        store.add_class(name)
    score = picks["score"].to_numpy() if "score" in picks else None
    store.add_particles(particle_zyx(picks), source="auto", score=score)
    for number in np.unique(labels[labels > 0]):
        store.set_class(np.flatnonzero(labels == number), int(number))
    store.set_predictions(predicted, probability)
    return Path(store.path)


def open_in_napari(result: DemoResult, viewer=None):
    """Show the demo in napari with the workflow dock holding its session.

    The dock opens the demo's tomogram with its annotation store (classes named after
    the complexes, picks, labels, predictions) and finds the encoder and classifier
    beside it, so prediction, Grad-CAM and export work at once. The ground truth and
    the whole-tomogram Grad-CAM map are added as hidden layers to compare with.

    Returns:
        (viewer, dock widget).
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-cryossl demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    session = widget.session
    session.set_particle_diameter(result.particle_diameter_a)
    session.open_tomogram(result.files["tomogram"])
    (truth,) = viewer.open(str(result.files["ground truth"]), plugin="napari-cryossl")
    truth.name = "ground truth (simulated)"
    truth.symbol = "ring"  # told apart from the predictions' discs at a glance
    truth.visible = False
    (heat,) = viewer.open(str(result.files["gradcam"]), plugin="napari-cryossl")
    heat.name = "Grad-CAM (every particle)"
    heat.colormap = "inferno"
    heat.blending = "additive"
    heat.opacity = 0.5
    heat.visible = False
    # The predictions stay the selected, visible layer.
    if session.predictions_layer is not None:
        viewer.layers.selection.active = session.predictions_layer
    widget.show_section("prediction")
    return viewer, widget


def _show_in_napari(result: DemoResult) -> None:
    """Open napari with the demo's session (`open_in_napari`) and run its event loop."""
    import napari

    open_in_napari(result)
    napari.run()
