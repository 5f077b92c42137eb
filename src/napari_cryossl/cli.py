"""`cryossl`: the command line, the contract for batch users and scripts.

Every subcommand is a thin layer over the GUI-free core, the same functions the
napari widgets call. Heavy libraries (torch, lightly) are imported inside the
commands so that `cryossl --help` answers at once. `main(argv=None)` returns an
exit code so tests call it as a function.

Bad input (a corrupt MRC, an empty STAR file, a checkpoint for another box size)
is reported as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2

_EPILOG = (
    "Coordinates: STAR/CSV files are XYZ in tomogram pixels (RELION-5 centred "
    "coordinates in Å are converted); class numbers are 1-based like "
    "rlnClassNumber, 0 or absent = unlabelled. Multi-GPU: "
    "torchrun --nproc_per_node=N -m napari_cryossl <command> ..."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The particles to read: a STAR file, its tomogram, the box to cut."""
    p.add_argument(
        "particles",
        type=Path,
        help="PARTICLES.star: subtomograms (rlnImageName) or coordinates in a tomogram "
        "(rlnCoordinateX/Y/Z with rlnTomoName, or RELION-5 centred Å), or a copick "
        "project config .json (its runs' tomograms and picks; see the copick options)",
    )
    p.add_argument(
        "--tomogram",
        type=Path,
        default=None,
        help="tomogram (MRC, or OME-Zarr .zarr folder) for coordinate STAR files, or a RELION "
        "tomograms.star that lists the tomograms (pixel size, binning, size; "
        "rlnTomoReconstructedTomogram) "
        "(default: from rlnTomoName next to the STAR)",
    )
    p.add_argument(
        "--box-size",
        type=_positive_int,
        default=None,
        help="subtomogram box edge in voxels when extracting from a tomogram (default 32)",
    )
    copick = p.add_argument_group(
        "copick projects (PARTICLES is a copick config .json; needs the [copick] extra)"
    )
    copick.add_argument(
        "--copick-voxel-spacing",
        type=float,
        default=None,
        help="voxel spacing (Å) of the tomograms to use (default: the project's only one)",
    )
    copick.add_argument(
        "--copick-tomo-type",
        default=None,
        help="tomogram type, e.g. wbp (default: the only one at that voxel spacing)",
    )
    copick.add_argument(
        "--copick-object",
        default=None,
        help="read only this object's picks, as unlabelled candidates (default: every "
        "particle object's picks, class = its label)",
    )
    copick.add_argument("--copick-user", default=None, help="read only picks of this user id")
    copick.add_argument(
        "--copick-session", default=None, help="read only picks of this session id"
    )


def _add_relion5_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--relion5",
        action="store_true",
        help="write the STAR as RELION 5 particles (rlnCenteredCoordinateX/Y/ZAngst: Å from "
        "each tomogram's centre, rlnTomoName, classes, probabilities) and the matching "
        "tomogram set beside it (OUT_tomograms.star); written from the particle table, so "
        "other columns of an input STAR (angles...) are not copied",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `cryossl` argument parser (also used to render the docs)."""
    parser = argparse.ArgumentParser(
        prog="cryossl",
        description="Contrastive self-supervised classification of cryo-ET subtomograms "
        "(MoCo / SimCLR / SwAV pretraining of an RB3D encoder, few-label fine-tuning, "
        "prediction, 3D Grad-CAM).",
        epilog=_EPILOG,
    )
    from napari_cryossl import __version__
    from napari_cryossl.options import add_arguments, describe
    from napari_cryossl.picking import PickSettings
    from napari_cryossl.population import EmbedSettings, SuggestSettings
    from napari_cryossl.predict import PredictSettings
    from napari_cryossl.saliency import GradcamSettings
    from napari_cryossl.simulate.config import SimulationConfig
    from napari_cryossl.train import FinetuneConfig, PretrainConfig

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # simulate -----------------------------------------------------------------
    p = sub.add_parser(
        "simulate",
        help="simulate ground-truth subtomograms and a crowded tomogram",
        description="Simulate crowded subtomograms (particles.star + MRCs) and a crowded tomogram "
        "(tomogram.mrc + tomogram_particles.star) with missing wedge, CTF and noise at a given SNR.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_arguments(p, SimulationConfig, only=("structures",))
    # --classes: the default depends on --structures (10, or one class per structure)
    classes = describe(SimulationConfig, "n_classes")
    p.add_argument("--classes", type=_positive_int, default=None, help=classes.help)
    p.add_argument("--per-class", type=int, default=500, help="subtomograms per class (0: none)")
    add_arguments(
        p, SimulationConfig, only=("box_size", "snr", "snr_reference", "voxel_size", "tilt_range_deg")
    )
    p.add_argument(
        "--tomogram-shape",
        type=_positive_int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help="also simulate a crowded tomogram of this shape (voxels)",
    )
    p.add_argument(
        "--tomogram-particles",
        type=_positive_int,
        default=None,
        help="particles in the tomogram (default 100)",
    )
    p.add_argument("--seed", type=int, default=0)

    # pick ---------------------------------------------------------------------
    p = sub.add_parser(
        "pick",
        help="Difference-of-Gaussians candidate picking in a tomogram",
        description="Find particle candidates (dark blobs by default) of a given diameter with a "
        "Difference of Gaussians, non-maximum suppression and a minimum distance. Works in chunks "
        "on a memory-mapped tomogram, so tomograms larger than RAM are fine.",
    )
    p.add_argument(
        "tomogram", type=Path, help="tomogram: MRC (.mrc/.rec/.map) or OME-Zarr folder (.zarr)"
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--diameter", type=float, help="particle diameter in Å")
    size.add_argument("--diameter-px", type=float, help="particle diameter in voxels")
    add_arguments(p, PickSettings)
    p.add_argument(
        "--out", type=Path, required=True, help="picks.star, picks.csv or picks.tbl (Dynamo)"
    )
    _add_relion5_option(p)

    # pretrain -------------------------------------------------------------------
    p = sub.add_parser(
        "pretrain",
        help="contrastive self-supervised pretraining of the encoder (labels not needed)",
        description="Pretrain an RB3D encoder on all particles with MoCo, SimCLR or SwAV. "
        "Writes ENCODER.pt after every epoch (and when stopped with Ctrl-C); --resume continues.",
    )
    _add_data_options(p)
    p.add_argument("--out", type=Path, required=True, help="ENCODER.pt checkpoint to write")
    add_arguments(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (default: refuse)"
    )

    # finetune -------------------------------------------------------------------
    p = sub.add_parser(
        "finetune",
        help="train a classifier on the labelled particles (rlnClassNumber)",
        description="Fine-tune a pretrained encoder (--init) or a randomly initialised one into a "
        "classifier, using rows with rlnClassNumber; unlabelled rows are ignored. The best "
        "validation model is kept.",
    )
    _add_data_options(p)
    p.add_argument("--out", type=Path, required=True, help="CLASSIFIER.pt checkpoint to write")
    p.add_argument("--init", type=Path, default=None, help="ENCODER.pt from `cryossl pretrain`")
    add_arguments(p, FinetuneConfig)
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (default: refuse)"
    )

    # predict --------------------------------------------------------------------
    p = sub.add_parser(
        "predict",
        help="classify every particle",
        description="Classify every particle. Writes the same rows in the same order with "
        "rlnClassNumber = predicted class and rlnMaxValueProbDistribution = its probability.",
    )
    p.add_argument("classifier", type=Path, help="CLASSIFIER.pt from `cryossl finetune`")
    _add_data_options(p)
    add_arguments(p, PredictSettings)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="PREDICTIONS.star (or .csv; or .tbl: a Dynamo table for subtomogram averaging; "
        "or a copick config .json: the predictions as picks, one set per class)",
    )
    _add_relion5_option(p)
    p.add_argument(
        "--copick-write",
        action="store_true",
        help="also write the predictions as picks into the input copick project",
    )
    p.add_argument(
        "--copick-write-session",
        default="predict",
        help="session id of the picks written (user id napari-cryossl; default: predict)",
    )
    p.add_argument("--embeddings", type=Path, default=None, help="also save embeddings (.npy)")

    # gradcam --------------------------------------------------------------------
    p = sub.add_parser(
        "gradcam",
        help="3D Grad-CAM heatmaps: what the network looked at",
        description="3D Grad-CAM (M3d-CAM style) for each particle. Writes one heatmap MRC per "
        "subtomogram, or one tomogram-sized heatmap MRC when the particles come from a tomogram.",
    )
    p.add_argument("classifier", type=Path, help="CLASSIFIER.pt from `cryossl finetune`")
    _add_data_options(p)
    add_arguments(p, GradcamSettings)
    p.add_argument("--out", type=Path, required=True, help="output folder")

    # embed ------------------------------------------------------------------------
    p = sub.add_parser(
        "embed",
        help="embeddings, a 2D map and clusters of every particle",
        description="Embed every particle with an encoder or classifier checkpoint. Writes the "
        "input rows plus cryosslMapX, cryosslMapY (a UMAP map, or PCA without umap-learn) and "
        "cryosslCluster (k-means with --clusters N, else HDBSCAN; 0 = noise), and the "
        "embedding vectors to OUT.npy (one row per particle, same order).",
    )
    p.add_argument("model", type=Path, help="ENCODER.pt or CLASSIFIER.pt")
    _add_data_options(p)
    add_arguments(p, EmbedSettings)
    p.add_argument("--out", type=Path, required=True, help="OUT.star (or .csv); OUT.npy beside it")

    # suggest ----------------------------------------------------------------------
    p = sub.add_parser(
        "suggest",
        help="the unlabelled particles worth labelling next",
        description="Choose N unlabelled particles (no class, or class 0) to label next. "
        "With few labels, the most typical particle of each group of the population that "
        "has no label yet (TypiClust); later, the least certain under a logistic "
        "regression on the labelled particles' embeddings (smallest margin), spread over "
        "the population (k-centre). Writes those rows, most informative first.",
    )
    p.add_argument("model", type=Path, help="ENCODER.pt or CLASSIFIER.pt")
    _add_data_options(p)
    add_arguments(p, SuggestSettings)
    p.add_argument("--out", type=Path, required=True, help="NEXT.star (or .csv)")

    # demo -------------------------------------------------------------------------
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on built-in simulated data",
        description="simulate -> pick -> pretrain -> fine-tune on a few labels -> predict -> Grad-CAM "
        "on a simulated crowded tomogram of real complexes, with a summary of accuracy against the "
        "ground truth and time per stage.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the user cache folder, e.g. ~/.cache/napari-cryossl/demo; "
        "the summary prints it)",
    )
    p.add_argument(
        "--data",
        choices=["complexes", "shapes"],
        default="complexes",
        help="built-in real complexes (default; the classes carry their names) or the "
        "simulator's synthetic shapes of equal size and mass (the harder case)",
    )
    p.add_argument(
        "--gui",
        action="store_true",
        help="open napari at the end, the dock holding the demo's tomogram, classes, labels, "
        "predictions and models",
    )
    p.add_argument(
        "--preset",
        choices=["cpu", "gpu"],
        default=None,
        help="size of the run (default: gpu if CUDA else cpu)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return parser


# --------------------------------------------------------------------------------------------
# Commands: each one parses nothing and decides nothing the core does not; it loads, calls the
# core and writes.


def _load_set(args: argparse.Namespace):
    from napari_cryossl.dataset import DEFAULT_BOX_SIZE, SubtomogramSet
    from napari_cryossl.io.copick import is_copick_config, read_copick

    if is_copick_config(args.particles):
        runs = read_copick(
            args.particles,
            voxel_spacing=args.copick_voxel_spacing,
            tomo_type=args.copick_tomo_type,
            object_name=args.copick_object,
            user_id=args.copick_user,
            session_id=args.copick_session,
        )
        box = args.box_size if args.box_size is not None else DEFAULT_BOX_SIZE
        return SubtomogramSet.from_tables([(table, path) for _, path, table in runs], box)
    tomogram = args.tomogram
    if tomogram is not None and Path(tomogram).suffix.lower() == ".star":  # a tomogram set
        return SubtomogramSet.from_star(args.particles, box_size=args.box_size, tomograms=tomogram)
    return SubtomogramSet.from_star(args.particles, box_size=args.box_size, tomogram=tomogram)


def _tomograms_star_beside(out: Path) -> Path:
    """Where a RELION-5 particle file's tomogram set goes: OUT_tomograms.star (never a
    project's own tomograms.star)."""
    return Path(out).with_name(Path(out).stem + "_tomograms.star")


def _write_particle_file(table, out: Path, *, voxel_size, records, relion5: bool) -> str:
    """A particle table as OUT by suffix: STAR (RELION 4 pixels, or RELION 5 with its
    tomogram set beside), CSV, or a Dynamo .tbl; returns a note on extra files written."""
    from napari_cryossl.io import (
        InputError,
        write_dynamo_table,
        write_particles,
        write_tomograms_star,
    )

    out = Path(out)
    suffix = out.suffix.lower()
    if relion5 and suffix != ".star":
        raise InputError(f"{out}: --relion5 writes RELION STAR files; use a .star --out")
    if suffix == ".tbl":
        doc = write_dynamo_table(table, out, voxel_size=voxel_size)
        return f" (table map {doc})" if doc is not None else ""
    if not relion5:
        write_particles(table, out)
        return ""
    if not records:
        raise InputError(
            f"{out}: --relion5 needs particles with coordinates in tomograms (these are "
            "subtomogram files)"
        )
    names = set(table["tomo_name"].astype(str)) - {""} if len(table) else set()
    used = {k: v for k, v in records.items() if k in names} or records
    write_particles(table, out, relion5=True, tomograms=used)
    tomograms_out = _tomograms_star_beside(out)
    write_tomograms_star(used, tomograms_out)
    return f" (tomogram set {tomograms_out})"


def _refuse_overwrite(args: argparse.Namespace) -> None:
    """A finished result is never replaced silently: --resume continues it, --overwrite
    replaces it."""
    from napari_cryossl.io import InputError

    out = Path(args.out)
    if out.exists() and not args.resume and not args.overwrite:
        raise InputError(
            f"{out} exists: --resume continues that run, --overwrite replaces it, or choose "
            "another --out"
        )


def _announce_finetune_epochs(config) -> None:
    """Say on a CPU that a GPU would train longer by default, and what that buys."""
    from napari_cryossl.devices import select_device
    from napari_cryossl.train import GPU_EPOCHS

    if config.epochs is not None or config.recipe not in GPU_EPOCHS or not _rank0():
        return
    if select_device(config.device).type != "cpu":
        return
    print(
        f"CPU: {config.resolved().epochs} epochs; on a GPU the default is "
        f"{GPU_EPOCHS[config.recipe]} (at low SNR accuracy keeps rising with training: "
        f"--epochs {GPU_EPOCHS[config.recipe]} to train as long here; docs/benchmarks.md).",
        file=sys.stderr,
        flush=True,
    )


def _cpu_defaults(config, n_particles: int):
    """On a CPU, pretrain for minutes, not hours: without --epochs the method's own
    epochs (200 for MoCo) are replaced by as many as fit ``options.CPU_PRETRAIN_STEPS``
    steps (at most ``CPU_PRETRAIN_EPOCHS``, at least one), and the choice is announced
    with how to change it."""
    import dataclasses
    import math

    from napari_cryossl.devices import select_device
    from napari_cryossl.options import CPU_PRETRAIN_EPOCHS, CPU_PRETRAIN_STEPS

    # Every rank of a torchrun job must choose the same schedule; only rank 0 says so.
    if select_device(config.device).type != "cpu":
        return config
    notes = []
    if config.epochs is None:
        batch = int(config.hyperparameters()["batch_size"])
        per_epoch = max(math.ceil(n_particles / batch), 1)
        epochs = max(1, min(CPU_PRETRAIN_EPOCHS, CPU_PRETRAIN_STEPS // per_epoch))
        config = dataclasses.replace(config, epochs=epochs)
        notes.append(
            f"{epochs} epoch(s) of {per_epoch} steps (the method's full schedule needs a GPU; "
            "--epochs N to choose)"
        )
    if config.preset == "rb3d":
        notes.append("rb3d is the paper's network and slow here: --preset rb3d-small is ~15x faster")
    else:
        notes.append(f"{config.preset}; --preset rb3d for the paper's network (needs a GPU)")
    if _rank0():
        print("CPU: " + "; ".join(notes) + ". The time left is shown as the run goes.",
              file=sys.stderr, flush=True)
    return config


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the sentence that says how to continue."""


@contextlib.contextmanager
def _resumable(args: argparse.Namespace, command: str):
    """Turn Ctrl-C into a message naming the checkpoint kept and the command to resume."""
    try:
        yield
    except KeyboardInterrupt:
        from napari_cryossl.train import last_checkpoint_path

        out = Path(args.out)
        kept = [p for p in (out, last_checkpoint_path(out)) if p.is_file()]
        if not kept:
            raise _Interrupted("no checkpoint was written yet") from None
        again = " ".join(sys.argv[1:]) if sys.argv[1:] else f"{command} ... --out {out}"
        if "--resume" not in again.split():
            again += " --resume"
        raise _Interrupted(
            f"checkpoint kept in {kept[-1] if command == 'finetune' else kept[0]}; "
            f"continue with: cryossl {again}"
        ) from None


def _rank0() -> bool:
    from napari_cryossl.distributed import is_main_process

    return is_main_process()


def cmd_simulate(args: argparse.Namespace) -> int:
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.simulate import SimulationConfig, simulate_to_disk

    structures = None
    more = {}
    if args.structures:
        from napari_cryossl.structures import resolve_structures

        structures = args.structures[0] if len(args.structures) == 1 else tuple(args.structures)
        more["n_classes"] = len(resolve_structures(structures))
    if args.classes is not None:
        more["n_classes"] = args.classes
    config = settings_from_args(SimulationConfig, args, structures=structures, **more)
    from napari_cryossl.console import StagedProgress

    units = {"simulate": "chunks", "write": "files", "tomogram": "tomograms"}
    with StagedProgress("simulate", units) as progress:
        paths = simulate_to_disk(
            args.out,
            config,
            n_per_class=args.per_class,
            tomogram_shape=tuple(args.tomogram_shape) if args.tomogram_shape else None,
            n_tomogram_particles=args.tomogram_particles,
            seed=args.seed,
            progress=progress,
        )
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    import dataclasses

    from napari_cryossl.io import InputError, open_tomogram, write_particles
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.picking import PickSettings, pick_particles

    tomo = open_tomogram(args.tomogram)
    if args.diameter is not None:
        if args.diameter <= 0:
            raise InputError(f"{args.tomogram}: --diameter must be positive, got {args.diameter}")
        diameter_px = args.diameter / tomo.voxel_size
    else:
        diameter_px = args.diameter_px
    from napari_cryossl.console import CallbackProgress

    settings = settings_from_args(PickSettings, args)
    with CallbackProgress("pick", "chunks") as progress:
        table = pick_particles(
            tomo.data, diameter_px, progress=progress, **dataclasses.asdict(settings)
        )
    # The tomogram as seen from the STAR's folder, so later commands find it from anywhere.
    name = _tomogram_reference(Path(args.tomogram), Path(args.out))
    table["tomo_name"] = name
    if Path(args.out).suffix.lower() in (".star", ".csv") and not args.relion5:
        write_particles(table, args.out, voxel_size=tomo.voxel_size, tomogram_shape=tomo.shape)
        note = ""
    else:
        from napari_cryossl.io import RelionTomogram

        note = _write_particle_file(
            table,
            Path(args.out),
            voxel_size=tomo.voxel_size,
            records={name: RelionTomogram.from_tomogram(tomo, name=name)},
            relion5=args.relion5,
        )
    print(
        f"{len(table)} particles picked in {args.tomogram} "
        f"(diameter {diameter_px:.1f} px, voxel {tomo.voxel_size:g} Å) -> {args.out}{note}"
    )
    hint = _picking_hint(len(table), diameter_px, tomo.shape)
    if hint:
        print(hint, file=sys.stderr)
    return 0


def _tomogram_reference(tomogram: Path, star: Path) -> str:
    """rlnTomoName for a tomogram: its name when the STAR sits beside it, else its path
    relative to the STAR's folder (absolute when there is no relative path)."""
    import os

    tomogram, folder = tomogram.resolve(), star.resolve().parent
    if tomogram.parent == folder:
        return tomogram.name
    try:
        return os.path.relpath(tomogram, folder)
    except ValueError:  # another drive (Windows)
        return str(tomogram)


def _picking_hint(n: int, diameter_px: float, shape) -> str:
    """What to change when picking found nothing, or more than a crowded cell holds."""
    import math

    import numpy as np

    volume = float(np.prod(shape))
    particle = math.pi / 6 * diameter_px**3
    size = "x".join(str(int(s)) for s in shape)
    if n == 0:
        if particle > volume / 8:
            return (
                f"hint: a particle of {diameter_px:.0f} px does not fit the {size} px "
                "tomogram a few times over: is --diameter in Å (--diameter-px for voxels)?"
            )
        return (
            "hint: nothing scored above the threshold: lower --threshold, check --diameter "
            "and --polarity (protein is dark by default: 'bright' for inverted contrast)"
        )
    fraction = n * particle / volume
    if fraction > 0.3:
        return (
            f"hint: {n} particles of {diameter_px:.0f} px would fill {fraction:.0%} of the "
            "tomogram, more than a crowded cytoplasm holds: many are probably noise; raise "
            "--threshold or --min-distance, or keep the best with --max-particles"
        )
    return ""


def cmd_pretrain(args: argparse.Namespace) -> int:
    from napari_cryossl.console import drive
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.train import PretrainConfig, iter_pretrain

    _refuse_overwrite(args)
    data = _load_set(args)
    config = settings_from_args(PretrainConfig, args)
    config = _cpu_defaults(config, len(data))
    with _resumable(args, "pretrain"):
        last, log = drive(
            iter_pretrain(data, config, args.out, resume=args.resume), f"pretrain {args.method}"
        )
    if _rank0():
        loss = f"{log.last_loss:.4f}" if log.last_loss is not None else "n/a"
        print(f"encoder -> {args.out} (epoch {last.epoch if last else 0}, last loss {loss})")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from napari_cryossl.console import drive
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    _refuse_overwrite(args)
    data = _load_set(args)
    config = settings_from_args(FinetuneConfig, args)
    _announce_finetune_epochs(config)
    with _resumable(args, "finetune"):
        last, _log = drive(
            iter_finetune(data, config, args.out, init=args.init, resume=args.resume), "finetune"
        )
    if _rank0():
        metrics = dict(last.metrics) if last is not None else {}
        best = metrics.get("best_val_accuracy")
        best_text = f", best validation accuracy {best:.3f}" if isinstance(best, float) else ""
        print(f"classifier -> {args.out}{best_text}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from napari_cryossl.console import drive
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.predict import PredictSettings, iter_predict

    settings = settings_from_args(PredictSettings, args)
    data = _load_set(args)
    result = None
    gen = iter_predict(args.classifier, data, **dataclasses.asdict(settings))
    results: list = []
    drive(gen, "predict", results=results)
    result = results[-1] if results else None
    if result is None or not _rank0():
        return 0
    note = _write_copick_predictions(args, data, result)
    if not _is_copick_out(args.out):
        note += _write_predictions(
            args.particles, args.out, data.table, result, data=data, relion5=args.relion5
        )
    if args.embeddings is not None:
        np.save(args.embeddings, result.embeddings)
    counts = np.bincount(result.class_numbers)
    summary = ", ".join(f"class {c}: {n}" for c, n in enumerate(counts) if n)
    print(f"{len(result.class_numbers)} particles classified -> {args.out}{note} ({summary})")
    return 0


def _is_copick_out(out: Path) -> bool:
    return Path(out).suffix.lower() == ".json"


def _write_copick_predictions(args: argparse.Namespace, data, result) -> str:
    """Predictions as copick picks: into OUT when it is a copick config .json, and into
    the input project with --copick-write; returns a note on what was written."""
    from napari_cryossl.io import InputError
    from napari_cryossl.io.copick import COPICK_USER_ID, is_copick_config, write_copick

    targets = []
    if _is_copick_out(args.out):
        if not is_copick_config(args.out):
            raise InputError(f"{args.out}: a .json --out must be an existing copick config")
        targets.append(Path(args.out))
    if args.copick_write:
        if not is_copick_config(args.particles):
            raise InputError(f"{args.particles}: --copick-write needs a copick config as input")
        if Path(args.particles) not in targets:
            targets.append(Path(args.particles))
    if not targets:
        return ""
    table = data.table.copy()
    table["class_number"] = result.class_numbers
    table["probability"] = result.confidence
    spacing = args.copick_voxel_spacing or data.voxel_size / data.binning
    sets = 0
    for config in targets:
        sets += len(
            write_copick(
                config,
                table,
                voxel_spacing=spacing,
                user_id=COPICK_USER_ID,
                session_id=args.copick_write_session,
            )
        )
    where = ", ".join(str(t) for t in targets)
    return (
        f" (copick: {sets} picks sets, user {COPICK_USER_ID}, session "
        f"{args.copick_write_session}, in {where})"
    )


def _write_predictions(
    source: Path, out: Path, table, result, *, data=None, relion5: bool = False
) -> str:
    """Write predictions with the same rows, in the same order, as the input file; returns a
    note on extra files written.

    A STAR output keeps every column of the input STAR (angles, optics groups, ...) and
    sets rlnClassNumber / rlnMaxValueProbDistribution; a CSV output is written from the
    particle table. With `relion5` (or a .tbl output: a Dynamo table) the file is written
    from the particle table in that form (see `_write_particle_file`).
    """
    from napari_cryossl.io import replace_star_columns, write_particles

    if relion5 or Path(out).suffix.lower() == ".tbl":
        table = table.copy()
        table["class_number"] = result.class_numbers
        table["probability"] = result.confidence
        voxel = None if data is None else data.voxel_size / data.binning
        records = {} if data is None else data.relion_tomograms
        return _write_particle_file(
            table, Path(out), voxel_size=voxel, records=records, relion5=relion5
        )
    if Path(out).suffix.lower() == ".star" and Path(source).suffix.lower() == ".star":
        replace_star_columns(
            source,
            out,
            {
                "rlnClassNumber": result.class_numbers,
                "rlnMaxValueProbDistribution": result.confidence,
            },
        )
    else:
        table = table.copy()
        table["class_number"] = result.class_numbers
        table["probability"] = result.confidence
        write_particles(table, out)
    return ""


def _write_rows(source: Path, out: Path, table, rows, columns: dict | None = None) -> None:
    """Write ``rows`` of the input (in that order) with extra ``columns``: a STAR input
    keeps every block and column of the user's file; otherwise the particle table."""
    import numpy as np

    from napari_cryossl.io import replace_star_columns, write_particles

    rows = np.asarray(rows, dtype=np.int64)
    columns = columns or {}
    if Path(out).suffix.lower() == ".star" and Path(source).suffix.lower() == ".star":
        replace_star_columns(source, out, columns, rows=rows)
        return
    subset = table.iloc[rows].reset_index(drop=True).copy()
    for label, values in columns.items():
        subset[label] = list(values)
    write_particles(subset, out)


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cryossl.options import settings_from_args
    from napari_cryossl.population import EmbedSettings, cluster, embed_particles, map_2d

    data = _load_set(args)
    settings = settings_from_args(EmbedSettings, args)
    embeddings = embed_particles(
        args.model, data, device=settings.device, batch_size=settings.batch_size
    )
    coords, method = map_2d(embeddings, method=settings.map, seed=settings.seed)
    groups = cluster(embeddings, n_clusters=settings.clusters, seed=settings.seed)
    out = Path(args.out)
    _write_rows(
        args.particles,
        out,
        data.table,
        np.arange(len(data)),
        {
            "cryosslMapX": coords[:, 0].astype(float).tolist(),
            "cryosslMapY": coords[:, 1].astype(float).tolist(),
            "cryosslCluster": groups.astype(int).tolist(),
        },
    )
    np.save(out.with_suffix(".npy"), embeddings)
    n_groups = len(set(groups.tolist()) - {0})
    print(
        f"{len(data)} particles embedded ({embeddings.shape[1]} features, {method.upper()} "
        f"map, {n_groups} clusters) -> {out}, {out.with_suffix('.npy')}"
    )
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cryossl.io import InputError
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.population import (
        SuggestSettings,
        embed_particles,
        resolved_strategy,
        suggest,
    )

    settings = settings_from_args(SuggestSettings, args)
    data = _load_set(args)
    labels = np.asarray(data.class_numbers, dtype=np.int64)
    if not (labels <= 0).any():
        raise InputError(f"{args.particles}: every particle is labelled; nothing to suggest")
    embeddings = embed_particles(
        args.model, data, device=settings.device, batch_size=settings.batch_size
    )
    chosen = suggest(embeddings, labels, settings.n, strategy=settings.strategy)
    _write_rows(args.particles, Path(args.out), data.table, chosen)
    how = {
        "typical": "typical particles of groups without a label",
        "margin": "least certain, spread out",
    }[resolved_strategy(labels, settings.strategy)]
    print(f"{len(chosen)} particles to label next ({how}) -> {args.out}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    import dataclasses

    from napari_cryossl.console import CallbackProgress
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.saliency import GradcamSettings, gradcam_for_set

    settings = settings_from_args(GradcamSettings, args)
    data = _load_set(args)
    with CallbackProgress("gradcam", "particles") as progress:
        written = gradcam_for_set(
            args.classifier, data, args.out, progress=progress, **dataclasses.asdict(settings)
        )
    print(f"{len(written)} heatmap file(s) -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_cryossl.demo import run_demo

    run_demo(
        args.out,
        preset=args.preset,
        device=args.device,
        seed=args.seed,
        gui=args.gui,
        preset_overrides={"structures": None} if args.data == "shapes" else None,
    )
    return 0


_COMMANDS = {
    "simulate": cmd_simulate,
    "pick": cmd_pick,
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "predict": cmd_predict,
    "gradcam": cmd_gradcam,
    "demo": cmd_demo,
    "embed": cmd_embed,
    "suggest": cmd_suggest,
}


def main(argv: list[str] | None = None) -> int:
    """Run `cryossl` with `argv` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from napari_cryossl.io import InputError

    try:
        return int(_COMMANDS[args.command](args) or 0)
    except InputError as err:
        print(f"cryossl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        detail = f" ({exc})" if isinstance(exc, _Interrupted) else ""
        print(f"cryossl {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
