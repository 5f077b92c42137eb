"""What the long-running `cryossl` commands (pretrain, finetune) share: refusing to replace
a finished checkpoint, the shorter CPU schedules and their announcement, turning Ctrl-C
into a message that says how to resume, and speaking only on rank 0 of a torchrun job.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


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
    cpu = config.resolved("cpu")
    print(
        f"CPU: {cpu.epochs} epochs, at least {cpu.min_steps} steps (--min-steps to change); "
        f"on a GPU the default is {GPU_EPOCHS[config.recipe]} epochs and "
        f"{config.resolved('cuda').min_steps} steps (at low SNR accuracy keeps rising with training: "
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
        state = last_checkpoint_path(out)
        if not state.is_file():
            raise _Interrupted("no checkpoint was written yet") from None
        again = " ".join(sys.argv[1:]) if sys.argv[1:] else f"{command} ... --out {out}"
        if "--resume" not in again.split():
            again += " --resume"
        kept = f"; {out} was not touched" if out.is_file() else ""
        raise _Interrupted(
            f"the run so far is in {state} (it loads as a checkpoint too){kept}; "
            f"continue with: cryossl {again}"
        ) from None


def _rank0() -> bool:
    from napari_cryossl.distributed import is_main_process

    return is_main_process()
