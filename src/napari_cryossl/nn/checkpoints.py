"""Checkpoint files of encoders and classifiers: what they hold, writing and reading them.

A checkpoint is a dict of tensors and plain Python values (``checkpoint_state`` builds
it from a model), written atomically (``save_checkpoint``: a temporary file, then
``os.replace``) and read with ``torch.load(weights_only=True)`` (``load_checkpoint``),
so that a checkpoint from someone else cannot run code on the user's machine.
``encoder_from_checkpoint`` and ``classifier_from_checkpoint`` rebuild the networks
of ``models.py`` with the stored architecture and weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.errors import InputError
from napari_cryossl.nn.models import (
    _LEGACY_ARCH,
    Classifier,
    EncoderPreset,
    RB3DEncoder,
    build_encoder,
)

__all__ = [
    "CHECKPOINT_VERSION",
    "checkpoint_state",
    "classifier_from_checkpoint",
    "encoder_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

#: Format version of the checkpoint dictionary; bump when keys change meaning.
CHECKPOINT_VERSION = 1

#: Keys every checkpoint must carry (others are optional).
_REQUIRED_KEYS = ("kind", "preset", "box_size", "model")
_KINDS = ("encoder", "classifier")


def _plain(value: Any, key: str = "state") -> Any:
    """Convert ``value`` to what ``torch.load(weights_only=True)`` accepts.

    numpy arrays become lists, numpy scalars Python numbers, paths strings;
    tensors are detached and moved to the CPU. Anything else (an arbitrary
    object) is refused here rather than producing an unloadable file.
    """
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None:
        return None
    for base in (bool, int, float, str):  # enums and other subclasses would pickle their class
        if isinstance(value, base):
            return base(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{key}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"checkpoint value {key} of type {type(value).__name__} cannot be stored safely; "
        "use tensors, numbers, strings, lists or dicts"
    )


def checkpoint_state(
    model: nn.Module,
    *,
    voxel_size: float | None = None,
    normalisation: str = "per-box zero mean, unit std",
    class_numbers: list[int] | None = None,
    class_names: list[str] | None = None,
    method: str = "",
    epoch: int = 0,
    optimizer: dict | None = None,
    config: dict | None = None,
    **extra: Any,
) -> dict:
    """Assemble the checkpoint dictionary for an encoder or a classifier.

    Fills ``kind``, ``preset``, ``box_size``, ``architecture`` and ``version``
    from the model so that callers only provide what the model cannot know.

    Args:
        model: ``RB3DEncoder`` (kind "encoder") or ``Classifier`` (kind "classifier").
        voxel_size: Å per voxel of the training boxes.
        normalisation: how boxes were normalised before the network.
        class_numbers: sorted 1-based class numbers, one per output (classifiers).
        class_names: names for ``class_numbers``.
        method: "moco", "simclr", "swav", "supervised", ...
        epoch: epochs completed.
        optimizer: ``optimizer.state_dict()`` to resume from, or None.
        config: training configuration (plain values).
        **extra: any further plain values.

    Returns:
        A dict ready for ``save_checkpoint``.
    """
    if isinstance(model, Classifier):
        kind, encoder = "classifier", model.encoder
        if class_numbers is not None and len(class_numbers) != model.n_classes:
            raise ValueError(
                f"{len(class_numbers)} class numbers given for a {model.n_classes}-class model"
            )
    elif isinstance(model, RB3DEncoder):
        kind, encoder = "encoder", model
    else:
        raise TypeError(f"expected an RB3DEncoder or Classifier, got {type(model).__name__}")
    state = {
        "kind": kind,
        "preset": encoder.preset,
        "box_size": encoder.box_size,
        "architecture": asdict(encoder.arch),
        "voxel_size": voxel_size,
        "normalisation": normalisation,
        "class_numbers": [int(c) for c in class_numbers] if class_numbers is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        "method": method,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer,
        "config": config or {},
        "version": CHECKPOINT_VERSION,
    }
    if kind == "classifier":
        state["dropout"] = model.dropout
    state.update(extra)
    return state


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically to ``path`` (temp file in the folder + os.replace).

    A crash or a stopped run never leaves a half-written checkpoint: the old
    file stays until the new one is complete.

    Args:
        path: destination, conventionally ``*.pt``.
        state: dict with at least ``kind``, ``preset``, ``box_size`` and ``model``
            (see ``checkpoint_state``). Values are converted to plain types.

    Raises:
        ValueError: a required key is missing or ``kind`` is unknown.
        TypeError: a value cannot be stored in a weights-only checkpoint.
    """
    path = Path(path)
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state for {path} lacks key(s) {missing}")
    if state["kind"] not in _KINDS:
        raise ValueError(f"checkpoint kind must be one of {_KINDS}, got {state['kind']!r}")
    plain = _plain(dict(state))
    plain.setdefault("version", CHECKPOINT_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(plain, tmp)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    preset: str | None = None,
    box_size: int | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Read a checkpoint written by ``save_checkpoint``, safely and with checks.

    Args:
        path: checkpoint file.
        kind: require "encoder" or "classifier" (None: either).
            An encoder is needed to fine-tune; a classifier to predict.
        preset: require this architecture preset (None: any).
        box_size: require this box size in voxels (None: any).
        map_location: where tensors are loaded.

    Returns:
        The state dictionary.

    Raises:
        InputError: missing or unreadable file, not a napari-cryossl checkpoint,
            or a kind / preset / box size other than required. The message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise InputError(
            f"{path}: not a readable napari-cryossl checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED_KEYS):
        raise InputError(
            f"{path}: not a napari-cryossl checkpoint (expected a dict with keys "
            f"{list(_REQUIRED_KEYS)})"
        )
    if state["kind"] not in _KINDS:
        raise InputError(f"{path}: unknown checkpoint kind {state['kind']!r}")
    version = state.get("version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(
            f"{path}: checkpoint format version {version!r} is newer than this napari-cryossl "
            f"understands ({CHECKPOINT_VERSION}); update napari-cryossl"
        )
    if kind is not None and state["kind"] != kind:
        hint = (
            " (a pretrained encoder must be fine-tuned into a classifier before predicting)"
            if kind == "classifier"
            else ""
        )
        raise InputError(f"{path}: is a {state['kind']} checkpoint, expected a {kind}{hint}")
    if preset is not None and state["preset"] != preset:
        raise InputError(
            f"{path}: was trained with model preset {state['preset']!r}, not {preset!r}"
        )
    if box_size is not None and int(state["box_size"]) != int(box_size):
        raise InputError(
            f"{path}: was trained on {state['box_size']}^3 boxes, not {int(box_size)}^3; "
            f"cut the particles at the checkpoint's box size (--box-size {state['box_size']}, "
            "which the commands that take this checkpoint use when --box-size is left out)"
        )
    return state


def _arch_overrides(state: dict) -> dict:
    """The checkpoint's architecture; a field it lacks takes its value in ``_LEGACY_ARCH``.

    A checkpoint without a field was trained with the layout that value describes, so the
    network is rebuilt from the checkpoint, not from what its preset name means today.
    """
    arch = state.get("architecture") or {}
    valid = {f.name for f in fields(EncoderPreset)}
    out = {k: v for k, v in arch.items() if k in valid}
    if arch:
        for key, value in _LEGACY_ARCH.items():
            out.setdefault(key, value)
    return out


def _unweighted_encoder(state: dict) -> RB3DEncoder:
    """The checkpoint's architecture on the meta device: shapes only, no initialisation.

    Initialising weights that the checkpoint replaces at once is pure waste: for rb3d's
    268 M-weight FC layer PyTorch's default plus He initialisation take ~4.5 s on a
    2-core CPU. Callers load the weights with ``load_state_dict(..., assign=True)``.
    """
    with torch.device("meta"):
        return build_encoder(state["preset"], int(state["box_size"]), **_arch_overrides(state))


def encoder_from_checkpoint(state: dict) -> RB3DEncoder:
    """Rebuild the encoder of an encoder or classifier checkpoint, with its weights."""
    encoder = _unweighted_encoder(state)
    weights = state["model"]
    if state["kind"] == "classifier":
        weights = {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}
    encoder.load_state_dict(weights, assign=True)
    return encoder


def classifier_from_checkpoint(state: dict) -> Classifier:
    """Rebuild a ``Classifier`` with its weights from a classifier checkpoint."""
    if state["kind"] != "classifier":
        raise ValueError(f"expected a classifier checkpoint, got kind {state['kind']!r}")
    weight = state["model"].get("head.1.weight")
    if weight is None:
        raise ValueError("classifier checkpoint has no head weights ('head.1.weight')")
    encoder = _unweighted_encoder(state)
    with torch.device("meta"):
        model = Classifier(encoder, int(weight.shape[0]), dropout=float(state.get("dropout", 0.5)))
    model.load_state_dict(state["model"], assign=True)
    return model
