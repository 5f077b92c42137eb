"""The `cryossl` subcommands, one `cmd_<name>(args)` each, and the table `main` runs them
from. Each one turns its arguments into one call of an operation (``napari_cryossl.ops``,
which loads the input, resolves the defaults, does the work and writes the files) and
reports what it did; what the training commands share is in `cli.training`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cryossl.cli.training import (
    _announce,
    _rank0,
    _resumable,
)


def _copick(args: argparse.Namespace):
    """The copick selection of a command's arguments (options a command lacks: any)."""
    from napari_cryossl.ops.particles import CopickQuery

    return CopickQuery(
        voxel_spacing=getattr(args, "copick_voxel_spacing", None),
        tomo_type=getattr(args, "copick_tomo_type", None),
        object_name=getattr(args, "copick_object", None),
        user_id=getattr(args, "copick_user", None),
        session_id=getattr(args, "copick_session", None),
    )


def _inputs(args: argparse.Namespace) -> dict:
    """Where the particles come from, as every operation takes it."""
    return {"tomogram": args.tomogram, "box_size": args.box_size, "copick": _copick(args)}


def cmd_simulate(args: argparse.Namespace) -> int:
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.simulate import SimulationConfig

    structures = None
    more = {}
    if args.structures:
        from napari_cryossl.simulate.structures import resolve_structures

        structures = args.structures[0] if len(args.structures) == 1 else tuple(args.structures)
        more["n_classes"] = len(resolve_structures(structures))
    if args.classes is not None:
        more["n_classes"] = args.classes
    config = settings_from_args(SimulationConfig, args, structures=structures, **more)
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.simulate import simulate

    operation = simulate(
        args.out,
        config,
        n_per_class=args.per_class,
        tomogram_shape=tuple(args.tomogram_shape) if args.tomogram_shape else None,
        n_tomogram_particles=args.tomogram_particles,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    paths = run_operation(operation, "simulate")
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.pick import pick_tomograms
    from napari_cryossl.particles.picking import PickSettings

    template = getattr(args, "template", None)
    matching = None
    if template is not None:
        from napari_cryossl.particles.template_matching import TemplateMatchSettings

        matching = settings_from_args(TemplateMatchSettings, args)
    operation = pick_tomograms(
        args.tomogram,
        diameter_a=args.diameter,
        diameter_px=args.diameter_px,
        settings=settings_from_args(PickSettings, args),
        template=template,
        matching=matching,
        out=args.out,
        relion5=args.relion5,
        overwrite=args.overwrite,
        model=getattr(args, "model", None),
        copick=_copick(args),
        **({"views": args.views} if getattr(args, "model", None) is not None else {}),
    )
    output = run_operation(operation, "template matching" if template else "pick")
    several = len(output.per_tomogram) > 1
    for name, result in output.per_tomogram:
        tomo, a = result.tomogram, result.matching
        if a:
            print(
                f"template {template}: {a['n_rotations']} rotations, low-pass "
                f"{a['resolution_px']:.1f} px, threshold {a['threshold']:.2f} noise units "
                f"(σ of the correlation {a['sigma']:.4f})",
                file=sys.stderr,
            )
        where = f"{tomo.path}" + (f" ({name})" if several and name != str(tomo.path) else "")
        print(
            f"{len(result.table)} particles picked in {where} "
            f"(diameter {result.diameter_px:.1f} px, voxel {tomo.voxel_size:g} Å)"
            + ("" if several else f" -> {args.out}{output.note}")
        )
        hint = _picking_hint(len(result.table), result.diameter_px, tomo.shape)
        if hint:
            print(hint if not several else f"{name}: {hint}", file=sys.stderr)
    if several:
        print(
            f"{len(output.table)} particles in {len(output.per_tomogram)} tomograms "
            f"(rlnTomoName) -> {args.out}{output.note}"
        )
    return 0


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


def cmd_train_picker(args: argparse.Namespace) -> int:
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.picker import train_picker

    copick = _copick(args)
    operation = train_picker(
        args.particles, args.out, tomogram=args.tomogram, copick=copick,
        diameter_a=args.diameter, steps=args.steps, init=args.init, overwrite=args.overwrite,
    )
    path = run_operation(operation, "train picker")
    from napari_cryossl.particles.learned_picker import picker_metadata

    state = picker_metadata(path)
    classes = ", ".join(
        f"{k}: {n}" if n != str(k) else str(k)
        for k, n in zip(state["class_numbers"], state["class_names"], strict=True)
    )
    print(
        f"picker -> {path} (classes {classes}; diameter {state['diameter_px']:.1f} px"
        + (f", voxel {state['voxel_size']:g} Å" if state.get("voxel_size") else "")
        + (f"; continued from {args.init}" if args.init else "")
        + ")"
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.train import pretrain
    from napari_cryossl.train import PretrainConfig

    config = settings_from_args(PretrainConfig, args)
    operation = pretrain(
        args.particles, config, args.out, resume=args.resume, overwrite=args.overwrite,
        announce=_announce, **_inputs(args),
    )
    with _resumable(args, "pretrain"):
        last = run_operation(operation, f"pretrain {args.method}")
    if _rank0():
        loss = f"{last.loss:.4f}" if last is not None and last.loss is not None else "n/a"
        print(f"encoder -> {args.out} (epoch {last.epoch if last else 0}, last loss {loss})")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.train import finetune
    from napari_cryossl.train import FinetuneConfig

    config = settings_from_args(FinetuneConfig, args)
    operation = finetune(
        args.particles, config, args.out, init=args.init, resume=args.resume,
        overwrite=args.overwrite, announce=_announce, **_inputs(args),
    )
    with _resumable(args, "finetune"):
        last = run_operation(operation, "finetune")
    if _rank0():
        metrics = dict(last.metrics) if last is not None else {}
        best = metrics.get("best_val_accuracy")
        best_text = f", best validation accuracy {best:.3f}" if isinstance(best, float) else ""
        print(f"classifier -> {args.out}{best_text}")
        if isinstance(metrics.get("temperature"), float):
            print(
                f"calibration: temperature {metrics['temperature']:.2f}, expected calibration "
                f"error on the validation split {metrics.get('val_ece', float('nan')):.3f} -> "
                f"{metrics.get('val_ece_calibrated', float('nan')):.3f} (15 bins)"
            )
            if metrics.get("calibration_note"):
                print(f"calibration: {metrics['calibration_note']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cryossl.analysis.predict import PredictSettings
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.predict import predict

    operation = predict(
        args.classifier,
        args.particles,
        settings=settings_from_args(PredictSettings, args),
        out=args.out,
        relion5=args.relion5,
        embeddings_out=args.embeddings,
        copick_write=args.particles if args.copick_write else None,
        copick_session=args.copick_write_session,
        overwrite=args.overwrite,
        **_inputs(args),
    )
    output = run_operation(operation, "predict")
    if output is None or not _rank0():
        return 0
    counts = np.bincount(output.predictions.class_numbers)
    summary = ", ".join(f"class {c}: {n}" for c, n in enumerate(counts) if n)
    print(
        f"{len(output.predictions.class_numbers)} particles classified -> {args.out}"
        f"{output.note} ({summary})"
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from napari_cryossl.analysis.population import EmbedSettings
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.embed import embed

    out = Path(args.out)
    operation = embed(
        args.model, args.particles, settings=settings_from_args(EmbedSettings, args), out=out,
        overwrite=args.overwrite, **_inputs(args),
    )
    result = run_operation(operation, "embed")
    n_groups = len(set(result.clusters.tolist()) - {0})
    print(
        f"{len(result.embeddings)} particles embedded ({result.embeddings.shape[1]} features, "
        f"{result.method.upper()} map, {n_groups} clusters) -> {out}, {out.with_suffix('.npy')}"
    )
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from napari_cryossl.analysis.population import SuggestSettings
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.embed import suggest

    operation = suggest(
        args.model, args.particles, settings=settings_from_args(SuggestSettings, args),
        out=args.out, overwrite=args.overwrite, **_inputs(args),
    )
    result = run_operation(operation, "suggest")
    how = {
        "typical": "typical particles of groups without a label",
        "margin": "least certain, spread out",
        "auto": "typical particles, the least certain first",
    }[result.strategy]
    print(f"{len(result.rows)} particles to label next ({how}) -> {args.out}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    from napari_cryossl.analysis.saliency import GradcamSettings
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli.console import run_operation
    from napari_cryossl.ops.gradcam import gradcam

    operation = gradcam(
        args.classifier, args.particles, args.out,
        settings=settings_from_args(GradcamSettings, args), overwrite=args.overwrite,
        **_inputs(args),
    )
    written = run_operation(operation, "gradcam")
    print(f"{len(written)} heatmap file(s) -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_cryossl.cli.demo import run_demo

    run_demo(
        args.out,
        preset=args.preset,
        device=args.device,
        seed=args.seed,
        gui=args.gui,
        preset_overrides={"structures": None} if args.data == "shapes" else None,
        overwrite=args.overwrite,
    )
    return 0


_COMMANDS = {
    "simulate": cmd_simulate,
    "pick": cmd_pick,
    "train-picker": cmd_train_picker,
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "predict": cmd_predict,
    "gradcam": cmd_gradcam,
    "demo": cmd_demo,
    "embed": cmd_embed,
    "suggest": cmd_suggest,
}
