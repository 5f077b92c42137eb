"""The `cryossl` argument parser: every subcommand, option, default and help text.

Kept apart from the commands so that `cryossl --help` (and the docs, which render
this parser) need nothing but argparse; the settings dataclasses that supply most
options are imported inside `build_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    _add_particles_argument(p)
    _add_tomogram_option(p)
    p.add_argument(
        "--box-size",
        type=_positive_int,
        default=None,
        help="subtomogram box edge in voxels when extracting from a tomogram (default 32)",
    )
    _add_copick_options(p)


def _add_particles_argument(
    p: argparse.ArgumentParser,
    what: str = "subtomograms (rlnImageName) or coordinates in a tomogram",
) -> None:
    p.add_argument(
        "particles",
        type=Path,
        help=f"PARTICLES.star: {what} "
        "(rlnCoordinateX/Y/Z with rlnTomoName, or RELION-5 centred Å), or a copick "
        "project config .json (its runs' tomograms and picks; see the copick options)",
    )


def _add_tomogram_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tomogram",
        type=Path,
        default=None,
        help="tomogram (MRC, or OME-Zarr .zarr folder) for coordinate STAR files, or a RELION "
        "tomograms.star that lists the tomograms (pixel size, binning, size; "
        "rlnTomoReconstructedTomogram) "
        "(default: from rlnTomoName next to the STAR)",
    )


def _add_copick_options(p: argparse.ArgumentParser, *, picks: bool = True) -> None:
    """Which tomograms (and, with `picks`, which picks) of a copick project to read."""
    copick = p.add_argument_group(
        "copick projects (PARTICLES is a copick config .json; needs the [copick] extra)"
        if picks
        else "copick projects (a TOMOGRAM is a copick config .json; needs the [copick] extra)"
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
    if not picks:
        return
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


def _add_overwrite_option(p: argparse.ArgumentParser, what: str = "--out") -> None:
    """Every command refuses to replace an existing output unless told to."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists (default: refuse, and write nothing)",
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
    from napari_cryossl.analysis.population import EmbedSettings, SuggestSettings
    from napari_cryossl.analysis.predict import PredictSettings
    from napari_cryossl.analysis.saliency import GradcamSettings
    from napari_cryossl.base.options import add_arguments, describe
    from napari_cryossl.particles.learned_picker import PickerConfig
    from napari_cryossl.particles.picking import PickSettings
    from napari_cryossl.particles.template_matching import TemplateMatchSettings
    from napari_cryossl.simulate.config import CLUTTER_OPTIONS, SimulationConfig
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
    add_arguments(p, SimulationConfig, only=CLUTTER_OPTIONS)  # clutter in the tomogram
    p.add_argument("--seed", type=int, default=0)
    _add_overwrite_option(p, "the files in --out")

    # pick ---------------------------------------------------------------------
    p = sub.add_parser(
        "pick",
        help="candidate picking in a tomogram: Difference of Gaussians, or template matching",
        description="Find particle candidates (dark blobs by default) of a given diameter with a "
        "Difference of Gaussians, non-maximum suppression and a minimum distance, each moved to "
        "its particle's centre (--no-refine: the DoG peaks). With --template, find copies of a "
        "structure instead (local normalised cross-correlation over rotations, missing wedge, "
        "automatic threshold from --false-alarms) and write each pick's orientation "
        "(rlnAngleRot/Tilt/Psi). With --model, a learned picker (cryossl train-picker) finds "
        "particles like its examples, with their class. Works in chunks on a memory-mapped "
        "tomogram, so tomograms larger than RAM are fine. Several tomograms (files, a RELION "
        "tomograms.star, a copick project) go into one file, rlnTomoName naming each pick's "
        "tomogram.",
    )
    p.add_argument(
        "tomogram",
        type=Path,
        nargs="+",
        metavar="TOMOGRAM",
        help="tomogram(s): MRC (.mrc/.rec/.map) or OME-Zarr folder (.zarr), a RELION "
        "tomograms.star (every tomogram it lists, rlnTomoName kept) or a copick config .json "
        "(every run's tomogram; see the copick options)",
    )
    size = p.add_mutually_exclusive_group(required=False)
    size.add_argument(
        "--diameter", type=float, help="particle diameter in Å (optional with --template)"
    )
    size.add_argument("--diameter-px", type=float, help="particle diameter in voxels")
    add_arguments(p, PickSettings)
    tm = p.add_argument_group("template matching (--template)")
    tm.add_argument(
        "--template",
        default=None,
        metavar="MAP",
        help="pick by template matching with this structure: a density map (.mrc/.map, "
        "resampled to the tomogram's voxel size), an atomic model (.pdb/.cif) or a built-in "
        "complex's name (e.g. TRiC, apoferritin); the diameter defaults to the template's",
    )
    add_arguments(tm, TemplateMatchSettings)
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="PICKER.pt",
        help="pick with a learned picker (cryossl train-picker): its diameter and classes "
        "(every tomogram must have its voxel size); --threshold is then a probability "
        "(default 0.2); writes rlnClassNumber and the score (rlnAutopickFigureOfMerit)",
    )
    p.add_argument(
        "--views",
        type=_positive_int,
        default=None,
        choices=range(1, 9),
        metavar="N",
        help="with --model: symmetric views of the tomogram whose heatmaps are averaged "
        "(1-8, default 4: turns in the YX plane, then flipped); 1 is about 2.4x faster",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="picks.star, picks.csv or picks.tbl (Dynamo)"
    )
    _add_relion5_option(p)
    _add_copick_options(p, picks=False)
    _add_overwrite_option(p)

    # train-picker ---------------------------------------------------------------
    p = sub.add_parser(
        "train-picker",
        help="pick by example: train a picker on labelled particle centres",
        description="Train a small 3D U-Net to find the centres of the labelled particles "
        "(rlnClassNumber > 0; 0: unlabelled, ignored nearby) of one or more tomograms, one "
        "heatmap per class (named as the file names them: a copick object, an annotation "
        "file's cryosslClassName; else by number); then `cryossl pick TOMO... --model "
        "PICKER.pt` finds more like them. --init continues from an earlier picker (the next "
        "round: its weights, diameter and class names; a new class gets a fresh output).",
    )
    _add_particles_argument(p, "labelled particles (rlnClassNumber), coordinates in tomograms")
    _add_tomogram_option(p)
    p.add_argument("--out", type=Path, required=True, help="PICKER.pt checkpoint to write")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="PICKER.pt",
        help="continue from this picker (cryossl train-picker): the next round",
    )
    p.add_argument(
        "--diameter",
        type=float,
        default=None,
        help="particle diameter in Å (default: --init's, else estimated from the labelled "
        "particles)",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"training steps (default {PickerConfig().steps})",
    )
    _add_copick_options(p)
    _add_overwrite_option(p)

    # pretrain -------------------------------------------------------------------
    p = sub.add_parser(
        "pretrain",
        help="contrastive self-supervised pretraining of the encoder (labels not needed)",
        description="Pretrain an RB3D encoder on all particles with MoCo, SimCLR or SwAV. "
        "Writes ENCODER.pt when the run finishes; the state so far goes to ENCODER.last.pt after "
        "every epoch and when stopped with Ctrl-C, and --resume continues from it.",
    )
    _add_data_options(p)
    p.add_argument("--out", type=Path, required=True, help="ENCODER.pt checkpoint to write")
    add_arguments(p, PretrainConfig)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run whose state is beside --out (OUT.last.pt)",
    )
    _add_overwrite_option(p)

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
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run whose state is beside --out (OUT.last.pt)",
    )
    _add_overwrite_option(p)

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
    _add_overwrite_option(p, "--out (and --embeddings)")

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
    _add_overwrite_option(p, "heatmap files in --out")

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
    _add_overwrite_option(p, "OUT and OUT.npy")

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
    _add_overwrite_option(p)

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
    _add_overwrite_option(p, "the files of an earlier demo in --out")
    return parser
