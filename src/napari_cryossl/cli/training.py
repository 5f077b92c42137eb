"""What the long-running `cryossl` commands (pretrain, finetune) share: announcing the
schedule the operation chose for this machine, turning Ctrl-C into a message that says
how to resume, and speaking only on rank 0 of a torchrun job.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def _announce(notes: list[str]) -> None:
    """What an operation chose for this machine, on rank 0 of a torchrun job only."""
    if notes and _rank0():
        print("CPU: " + "; ".join(notes) + ". The time left is shown as the run goes.",
              file=sys.stderr, flush=True)


def _cpu_defaults(config, n_particles: int):
    """The CPU pretraining schedule (``ops.train.cpu_pretrain_schedule``), announced."""
    from napari_cryossl.ops.train import cpu_pretrain_schedule

    config, notes = cpu_pretrain_schedule(config, n_particles)
    _announce(notes)
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
    from napari_cryossl.nn.distributed import is_main_process

    return is_main_process()
