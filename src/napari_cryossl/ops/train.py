"""Pretraining and fine-tuning as operations: the schedule that fits the device, the
rule that a finished model is never replaced by accident, and the particles to train on."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

__all__ = ["cpu_pretrain_schedule", "finetune", "finetune_notes", "pretrain", "refuse_model"]


def refuse_model(out, *, resume: bool, overwrite: bool) -> None:
    """A finished model at ``out`` is never replaced silently: ``resume`` continues its
    run, ``overwrite`` replaces it when the new run finishes."""
    from napari_cryossl.io import InputError

    out = Path(out)
    if out.exists() and not resume and not overwrite:
        raise InputError(
            f"{out} exists: --resume continues that run, --overwrite replaces it, or choose "
            "another --out"
        )


def cpu_pretrain_schedule(config, n_particles: int):
    """On a CPU, pretrain for minutes, not hours: without ``epochs`` the method's own
    (200 for MoCo) are replaced by as many as fit ``options.CPU_PRETRAIN_STEPS`` steps
    (at most ``CPU_PRETRAIN_EPOCHS``, at least one). Returns (config, notes to show)."""
    from napari_cryossl.base.options import CPU_PRETRAIN_EPOCHS, CPU_PRETRAIN_STEPS
    from napari_cryossl.nn.devices import select_device

    if select_device(config.device).type != "cpu":
        return config, []
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
    return config, notes


def finetune_notes(config) -> list[str]:
    """On a CPU, what the default schedule is and what a GPU would run instead."""
    from napari_cryossl.nn.devices import select_device
    from napari_cryossl.train import GPU_EPOCHS

    if config.epochs is not None or config.recipe not in GPU_EPOCHS:
        return []
    if select_device(config.device).type != "cpu":
        return []
    cpu, gpu = config.resolved("cpu"), config.resolved("cuda")
    return [
        f"{cpu.epochs} epochs, at least {cpu.min_steps} steps (--min-steps to change); on a GPU "
        f"the default is {gpu.epochs} epochs and {gpu.min_steps} steps (at low SNR accuracy "
        f"keeps rising with training: --epochs {gpu.epochs} to train as long here; "
        "docs/benchmarks.md)"
    ]


def _last_of(generator):
    """Yield a training run's progress; return its last status, carrying the last loss
    seen (the final status has none of its own)."""
    last, loss = None, None
    for status in generator:
        last = status
        if status.loss is not None and math.isfinite(status.loss):
            loss = float(status.loss)
        yield status
    if last is not None and last.loss is None and loss is not None:
        last = dataclasses.replace(last, loss=loss)
    return last


def pretrain(
    particles,
    config,
    out,
    *,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    resume: bool = False,
    overwrite: bool = False,
    announce: Callable[[list[str]], None] | None = None,
):
    """Self-supervised pretraining on every particle (``train.iter_pretrain``), on the CPU
    with a schedule of minutes (``cpu_pretrain_schedule``; ``announce`` gets its notes).
    Returns the last ``Progress``."""
    from napari_cryossl.ops.particles import load_particles
    from napari_cryossl.train import iter_pretrain

    refuse_model(out, resume=resume, overwrite=overwrite)
    data = load_particles(particles, tomogram=tomogram, box_size=box_size, copick=copick)
    config, notes = cpu_pretrain_schedule(config, len(data))
    if announce is not None and notes:
        announce(notes)
    return (yield from _last_of(iter_pretrain(data, config, out, resume=resume)))


def finetune(
    particles,
    config,
    out,
    *,
    init=None,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    resume: bool = False,
    overwrite: bool = False,
    announce: Callable[[list[str]], None] | None = None,
):
    """Fine-tune a classifier on the labelled particles (``train.iter_finetune``), cut
    at the box size of ``init`` when given. Returns the last ``Progress``."""
    from napari_cryossl.ops.particles import load_particles
    from napari_cryossl.train import iter_finetune

    refuse_model(out, resume=resume, overwrite=overwrite)
    data = load_particles(
        particles, tomogram=tomogram, box_size=box_size, checkpoint=init, copick=copick
    )
    notes = finetune_notes(config)
    if announce is not None and notes:
        announce(notes)
    return (yield from _last_of(iter_finetune(data, config, out, init=init, resume=resume)))
