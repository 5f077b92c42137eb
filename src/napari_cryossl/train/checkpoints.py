"""What the training checkpoints hold besides the weights, and where the resume state lives.

``out`` is what a user keeps (weights only); the resumable state (optimiser, schedule,
MoCo key encoder and queue, progress, random state) goes to ``last_checkpoint_path(out)``
(``<out stem>.last<suffix>``). The checkpoints themselves are written by
``checkpoints.save_checkpoint`` (atomic, loadable with ``weights_only=True``), so everything
stored here is plain values and tensors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["last_checkpoint_path", "unused_checkpoint_path"]


def last_checkpoint_path(out: str | Path) -> Path:
    """Where fine-tuning keeps its resumable state: ``classifier.pt`` -> ``classifier.last.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


def unused_checkpoint_path(out: str | Path) -> Path:
    """``out`` if neither it nor its resume state exists, else the first free
    ``<stem>-2<suffix>``, ``<stem>-3<suffix>``...: where a new run goes without replacing
    anything a user made."""
    out = Path(out)
    candidate, n = out, 1
    while candidate.exists() or last_checkpoint_path(candidate).exists():
        n += 1
        candidate = out.with_name(f"{out.stem}-{n}{out.suffix}")
    return candidate


def _check_resumable(out: Path, last: Path) -> None:
    """``resume`` with no state to resume from, but a finished result at ``out``: refuse,
    instead of training afresh and replacing that result when the new run finishes."""
    from napari_cryossl.io.errors import InputError

    if not Path(last).is_file() and Path(out).is_file():
        raise InputError(
            f"{out}: this run finished and its resume state ({Path(last).name}) was not kept "
            "(--keep-state keeps it), so there is nothing to continue; train into another "
            "file, or replace it (--overwrite)"
        )


def _rng_state(device) -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict | None, device) -> None:
    import torch

    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _plain_config(config) -> dict:
    """The config as plain values for the checkpoint (tuples -> lists, keys -> str)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        out[key] = value
    return out
