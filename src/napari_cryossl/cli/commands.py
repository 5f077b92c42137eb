"""The `cryossl` subcommands, one `cmd_<name>(args)` each, and the table `main` runs them
from. Each one parses nothing and decides nothing the core does not: it loads its input,
calls the GUI-free core and reports. The files are written by `cli.outputs`; what the
training commands share is in `cli.training`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cryossl.cli.outputs import (
    _is_copick_out,
    _tomogram_reference,
    _tomograms_star_beside,
    _write_copick_predictions,
    _write_particle_file,
    _write_predictions,
    _write_rows,
)
from napari_cryossl.cli.training import (
    _announce_finetune_epochs,
    _cpu_defaults,
    _rank0,
    _refuse_overwrite,
    _resumable,
)


def _box_size(args: argparse.Namespace, checkpoint) -> int | None:
    """The box edge to cut: --box-size when given, else the checkpoint's (a model only
    runs on the boxes it was trained on), else None (the data's own default)."""
    if checkpoint is None:
        return args.box_size
    from napari_cryossl.checkpoints import load_checkpoint
    from napari_cryossl.io import InputError

    trained = int(load_checkpoint(checkpoint)["box_size"])
    if args.box_size is not None and int(args.box_size) != trained:
        raise InputError(
            f"{checkpoint}: was trained on {trained}^3 boxes, not --box-size {args.box_size}; "
            f"leave out --box-size (or give --box-size {trained})"
        )
    return trained


def _load_set(args: argparse.Namespace, checkpoint=None):
    """The particles of the command's input (STAR/CSV, tomograms.star, copick), cut at the
    box size of `checkpoint` when one is given and --box-size is not."""
    from napari_cryossl.dataset import DEFAULT_BOX_SIZE, SubtomogramSet
    from napari_cryossl.io.copick import is_copick_config, read_copick

    box_size = _box_size(args, checkpoint)

    if is_copick_config(args.particles):
        runs = read_copick(
            args.particles,
            voxel_spacing=args.copick_voxel_spacing,
            tomo_type=args.copick_tomo_type,
            object_name=args.copick_object,
            user_id=args.copick_user,
            session_id=args.copick_session,
        )
        box = box_size if box_size is not None else DEFAULT_BOX_SIZE
        return SubtomogramSet.from_tables([(table, path) for _, path, table in runs], box)
    tomogram = args.tomogram
    if tomogram is not None and Path(tomogram).suffix.lower() == ".star":  # a tomogram set
        return SubtomogramSet.from_star(args.particles, box_size=box_size, tomograms=tomogram)
    return SubtomogramSet.from_star(args.particles, box_size=box_size, tomogram=tomogram)


def cmd_simulate(args: argparse.Namespace) -> int:
    from napari_cryossl.io import refuse_to_replace
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
    refuse_to_replace([args.out], overwrite=args.overwrite)
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

    from napari_cryossl.io import InputError, open_tomogram, refuse_to_replace, write_particles
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.picking import PickSettings, pick_particles

    outputs = [args.out] + ([_tomograms_star_beside(args.out)] if args.relion5 else [])
    refuse_to_replace(outputs, overwrite=args.overwrite)
    tomo = open_tomogram(args.tomogram)
    template = getattr(args, "template", None)
    if args.diameter is not None:
        if args.diameter <= 0:
            raise InputError(f"{args.tomogram}: --diameter must be positive, got {args.diameter}")
        diameter_px = args.diameter / tomo.voxel_size
    elif args.diameter_px is not None or template is not None:
        diameter_px = args.diameter_px
    else:
        raise InputError(
            f"{args.tomogram}: give the particle diameter (--diameter in Å or --diameter-px), "
            "or a --template"
        )
    from napari_cryossl.console import CallbackProgress

    settings = settings_from_args(PickSettings, args)
    if template is not None:
        table, diameter_px = _pick_by_template(args, tomo, diameter_px, settings)
    else:
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
    if template is not None:
        note += _write_angles(table, Path(args.out))
    print(
        f"{len(table)} particles picked in {args.tomogram} "
        f"(diameter {diameter_px:.1f} px, voxel {tomo.voxel_size:g} Å) -> {args.out}{note}"
    )
    hint = _picking_hint(len(table), diameter_px, tomo.shape)
    if template is not None and len(table) == 0:
        hint = (
            "hint: nothing scored above the threshold: raise --false-alarms or lower "
            "--threshold, check --polarity (protein is dark by default) and --tilt-range"
        )
    if hint:
        print(hint, file=sys.stderr)
    return 0


def _pick_by_template(args: argparse.Namespace, tomo, diameter_px, settings):
    """`cryossl pick --template`: match the template; returns (table, diameter in voxels)."""
    import dataclasses

    from napari_cryossl.console import CallbackProgress
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.template_matching import (
        TemplateMatchSettings,
        load_template,
        match_template,
    )

    matching = settings_from_args(TemplateMatchSettings, args)
    template = load_template(args.template, tomo.voxel_size)
    shared = dataclasses.asdict(settings)
    shared.pop("refine")  # DoG only: template picks are centred by construction
    with CallbackProgress("template matching", "rotation batches") as progress:
        table = match_template(
            tomo.data,
            template,
            diameter_px=diameter_px,
            progress=progress,
            **shared,
            **dataclasses.asdict(matching),
        )
    a = table.attrs
    print(
        f"template {args.template}: {a['n_rotations']} rotations, low-pass "
        f"{a['resolution_px']:.1f} px, threshold {a['threshold']:.2f} noise units "
        f"(σ of the correlation {a['sigma']:.4f})",
        file=sys.stderr,
    )
    return table, a["diameter_px"]


def _write_angles(table, out: Path) -> str:
    """Add the picks' orientations (rlnAngleRot/Tilt/Psi) to a written STAR file."""
    from napari_cryossl.io import replace_star_columns
    from napari_cryossl.template_matching import ANGLE_COLUMNS, ANGLE_LABELS

    if out.suffix.lower() != ".star" or len(table) == 0:
        return " (orientations are written to STAR files only)" if len(table) else ""
    columns = {
        label: table[col].to_numpy(dtype=float)
        for label, col in zip(ANGLE_LABELS, ANGLE_COLUMNS, strict=True)
    }
    replace_star_columns(out, out, columns)
    return ", with orientations (rlnAngleRot/Tilt/Psi)"


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
    data = _load_set(args, args.init)
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
    import dataclasses

    import numpy as np

    from napari_cryossl.console import drive
    from napari_cryossl.io import refuse_to_replace
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.predict import PredictSettings, iter_predict

    settings = settings_from_args(PredictSettings, args)
    outputs = [] if _is_copick_out(args.out) else [args.out]
    if args.relion5 and outputs:
        outputs.append(_tomograms_star_beside(args.out))
    if args.embeddings is not None:
        outputs.append(args.embeddings)
    refuse_to_replace(outputs, overwrite=args.overwrite)
    data = _load_set(args, args.classifier)
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


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cryossl.io import refuse_to_replace
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.population import EmbedSettings, embed_particles, map_and_cluster

    out = Path(args.out)
    refuse_to_replace([out, out.with_suffix(".npy")], overwrite=args.overwrite)
    data = _load_set(args, args.model)
    settings = settings_from_args(EmbedSettings, args)
    embeddings = embed_particles(
        args.model, data, device=settings.device, batch_size=settings.batch_size
    )
    coords, method, groups = map_and_cluster(
        embeddings, method=settings.map, n_clusters=settings.clusters, seed=settings.seed
    )
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

    from napari_cryossl.io import InputError, refuse_to_replace
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.population import (
        SuggestSettings,
        embed_particles,
        resolved_strategy,
        suggest,
    )

    settings = settings_from_args(SuggestSettings, args)
    refuse_to_replace([args.out], overwrite=args.overwrite)
    data = _load_set(args, args.model)
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
        "auto": "typical particles, the least certain first",
    }[resolved_strategy(labels, settings.strategy)]
    print(f"{len(chosen)} particles to label next ({how}) -> {args.out}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    import dataclasses

    from napari_cryossl.console import CallbackProgress
    from napari_cryossl.options import settings_from_args
    from napari_cryossl.saliency import GradcamSettings, gradcam_for_set

    settings = settings_from_args(GradcamSettings, args)
    data = _load_set(args, args.classifier)
    with CallbackProgress("gradcam", "particles") as progress:
        written = gradcam_for_set(
            args.classifier,
            data,
            args.out,
            progress=progress,
            overwrite=args.overwrite,
            **dataclasses.asdict(settings),
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
        overwrite=args.overwrite,
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
