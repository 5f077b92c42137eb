"""Batched inference: class probabilities, predicted class numbers and embeddings.

``predict(checkpoint, data)`` classifies every particle of a ``SubtomogramSet`` and
returns the results in the set's row order. ``iter_predict`` is the same as a
generator: it yields a ``status.Progress`` (stage "predict") after every batch, for
a progress bar or a napari ``thread_worker``, and the ``Predictions`` last.

How the hardware is used (see ``devices.py``): batches are loaded by a ``DataLoader``
(worker processes for file- or tomogram-backed sets when ``num_workers`` > 0), into
pinned memory on CUDA, copied with ``non_blocking=True``, and run under
``torch.inference_mode`` on a copy of the classifier with Conv+BatchNorm fused
(``models.for_inference``), in the ``channels_last_3d`` layout, with autocast to
bfloat16/float16 on GPUs and to bfloat16 on CPUs that compute it natively. When the GPU
runs out of memory the batch is split in halves and retried, down to one particle,
before giving up with a clear message.

Confidence is calibrated: a classifier from ``cryossl finetune`` stores a temperature T
fitted on its validation labels (``train/calibration.py``), and every logit is divided by
it before the softmax (T = 1 for checkpoints without one).

Junk: a class named ``JUNK_CLASS_NAME`` ("not a particle") is an ordinary class of the
classifier, labelled like the others (false picks: ice, gold, carbon edges, empty
background). Predictions carry its class number like any other; ``junk_class_number``
finds it, and Grad-CAM leaves particles predicted as junk blank.

Under torchrun each rank classifies a contiguous share of the particles (no padding,
so nothing is counted twice) and rank 0 gathers them back into the input order; the
other ranks get ``None``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryossl.base.options import BATCH_HELP, device_option, option, workers_option
from napari_cryossl.base.status import Progress
from napari_cryossl.particles.annotations import JUNK_CLASS_NAME

# The loader iter_predict uses; in __all__ too, for scripts that batch boxes as it does.
from napari_cryossl.particles.loader import batch_loader

__all__ = [
    "JUNK_CLASS_NAME",
    "PredictSettings",
    "Predictions",
    "batch_loader",
    "iter_predict",
    "junk_class_number",
    "load_classifier",
    "predict",
]


def junk_class_number(classes, class_names) -> int | None:
    """The class number named ``JUNK_CLASS_NAME`` (case and spaces ignored), or None."""
    for number, name in zip(classes, class_names, strict=False):
        if str(name).strip().lower() == JUNK_CLASS_NAME:
            return int(number)
    return None


@dataclass
class PredictSettings:
    """What a user chooses when classifying particles, declared once for ``cryossl
    predict`` and the dock's Prediction section (``options.py``);
    ``predict(checkpoint, data, **asdict(settings))`` applies them."""

    device: str = device_option()
    batch_size: int = option(64, BATCH_HELP, minimum=1)
    num_workers: int = workers_option()
    tta: int | None = option(
        None,
        "test-time augmentation: views averaged per particle (default: what the "
        "classifier was trained with; 1: fastest)",
        minimum=1,
    )


@dataclass
class Predictions:
    """Classifier output for every particle, in the input set's row order.

    Attributes:
        probabilities: float32 (N, C) softmax probabilities; column i is class
            ``classes[i]``.
        class_numbers: int64 (N,) predicted class number (RELION's 1-based numbering,
            as stored in the checkpoint).
        confidence: float32 (N,) probability of the predicted class.
        embeddings: float32 (N, F) encoder features (input to the last layer).
        classes: int64 (C,) the class number of each probability column.
        class_names: names of ``classes`` (from the checkpoint; "class N" if unnamed).
        temperature: the logits were divided by this before the softmax (the
            checkpoint's calibrated temperature; 1.0 for checkpoints without one).
    """

    probabilities: np.ndarray
    class_numbers: np.ndarray
    confidence: np.ndarray
    embeddings: np.ndarray
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_names: list[str] = field(default_factory=list)
    temperature: float = 1.0

    def __len__(self) -> int:
        return len(self.class_numbers)

    @property
    def junk_class(self) -> int | None:
        """The class number of ``JUNK_CLASS_NAME``, if the classifier has that class."""
        return junk_class_number(self.classes, self.class_names)

    @property
    def is_junk(self) -> np.ndarray:
        """bool (N,): the particle was predicted to be "not a particle"."""
        junk = self.junk_class
        if junk is None:
            return np.zeros(len(self.class_numbers), dtype=bool)
        return np.asarray(self.class_numbers) == junk


# --------------------------------------------------------------------------- models


def load_classifier(model_or_checkpoint, *, box_size: int | None = None, class_numbers=None):
    """A ``Classifier`` and its class numbers and names from a path, a state or a model.

    Args:
        model_or_checkpoint: a checkpoint path (from ``cryossl finetune``), a state
            dict from ``checkpoints.load_checkpoint``, or a ``models.Classifier``.
        box_size: required box size (an ``InputError`` names the file on mismatch).
        class_numbers: class number of each output, for a bare model (default 1..C).

    Returns:
        ``(model, classes int64 (C,), class_names list[str], state dict or None)``.
    """
    from napari_cryossl.io.errors import InputError
    from napari_cryossl.nn.checkpoints import classifier_from_checkpoint, load_checkpoint
    from napari_cryossl.nn.models import Classifier

    state = None
    if isinstance(model_or_checkpoint, str | os.PathLike):
        state = load_checkpoint(model_or_checkpoint, kind="classifier", box_size=box_size)
        model = classifier_from_checkpoint(state)
        where = str(model_or_checkpoint)
    elif isinstance(model_or_checkpoint, dict):
        state = model_or_checkpoint
        if state.get("kind") != "classifier":
            raise InputError(f"checkpoint is a {state.get('kind')!r}, expected a classifier")
        model = classifier_from_checkpoint(state)
        where = "checkpoint"
    elif isinstance(model_or_checkpoint, Classifier):
        model = model_or_checkpoint
        where = "model"
    else:
        raise TypeError(
            "expected a checkpoint path, a checkpoint dict or a Classifier, got "
            f"{type(model_or_checkpoint).__name__}"
        )
    if box_size is not None and int(model.box_size) != int(box_size):
        raise InputError(
            f"{where}: was trained on {model.box_size}^3 boxes, not {int(box_size)}^3; "
            f"cut the particles at the checkpoint's box size (--box-size {model.box_size})"
        )
    if state is not None and state.get("class_numbers") is not None:
        classes = np.asarray(state["class_numbers"], dtype=np.int64)
    elif class_numbers is not None:
        classes = np.asarray(class_numbers, dtype=np.int64)
    else:
        classes = np.arange(1, model.n_classes + 1, dtype=np.int64)
    if classes.shape != (model.n_classes,):
        raise InputError(
            f"{where}: {len(classes)} class numbers for a {model.n_classes}-class model"
        )
    names = list(state.get("class_names") or []) if state is not None else []
    if len(names) != len(classes):
        names = [f"class {int(c)}" for c in classes]
    return model, classes, names, state


def checkpoint_temperature(state: dict | None) -> float:
    """The calibrated temperature stored in a classifier checkpoint (1.0 if none)."""
    t = (state or {}).get("temperature")
    try:
        t = float(t)
    except (TypeError, ValueError):
        return 1.0
    return t if t > 0 and np.isfinite(t) else 1.0


def _check_voxel_size(state: dict | None, data, where: str) -> None:
    """Refuse data whose voxel size differs from training's by more than 2 %.

    A network trained at 10 Å/voxel sees particles at the wrong scale at 5 Å/voxel and
    predicts confidently wrong classes; an explicit error is kinder.
    """
    from napari_cryossl.io.errors import InputError

    trained = None if state is None else state.get("voxel_size")
    given = getattr(data, "voxel_size", None)
    if not trained or not given:
        return
    if abs(float(given) - float(trained)) > 0.02 * float(trained):
        raise InputError(
            f"{where}: the classifier was trained at {float(trained):g} Å/voxel but the "
            f"particles are {float(given):g} Å/voxel; bin or re-extract them to "
            f"{float(trained):g} Å/voxel (or pass check_voxel_size=False)"
        )


# --------------------------------------------------------------------------- inference


def forward_in_chunks(fn, x, chunk: list[int], device, *others) -> Any:
    """Run ``fn(x_part, *other_parts)`` on pieces of ``chunk[0]`` rows, halving on CUDA OOM.

    ``chunk`` is a one-element list so that a reduced size carries over to later
    batches. ``others`` are tensors sliced along dim 0 like ``x``. Results (tensors, or
    tuples of tensors) are concatenated along dim 0.

    Raises:
        DeviceOutOfMemoryError: even a single particle does not fit.
    """
    import torch

    from napari_cryossl.nn.devices import DeviceOutOfMemoryError, empty_cache, is_out_of_memory

    outputs = []
    start = 0
    n = x.shape[0]
    while start < n:
        size = min(chunk[0], n - start)
        part = slice(start, start + size)
        try:
            outputs.append(fn(x[part], *(t[part] for t in others)))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            empty_cache(device)
            if size <= 1:
                raise DeviceOutOfMemoryError(
                    f"{device}: out of GPU memory even for one subtomogram "
                    f"({tuple(x.shape[1:])}); use a smaller model preset, a smaller box, "
                    "or --device cpu"
                ) from exc
            chunk[0] = max(size // 2, 1)
            continue
        start += size
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))
    return torch.cat(outputs)


def iter_predict(
    model_or_checkpoint,
    data,
    *,
    batch_size: int = PredictSettings.batch_size,
    device="auto",
    num_workers: int = 0,
    amp: bool = True,
    class_numbers=None,
    check_voxel_size: bool = True,
    distributed=None,
    tta: int | None = None,
    temperature: float | None = None,
) -> Iterator[Any]:
    """Classify every particle, yielding progress; the last item is the ``Predictions``.

    Args:
        model_or_checkpoint: classifier checkpoint path, state dict, or ``Classifier``.
        data: a ``SubtomogramSet`` (boxes of the checkpoint's size).
        batch_size: particles loaded per step (halved automatically on GPU OOM).
        device: "auto", "cpu", "cuda", "cuda:N" or a ``torch.device``.
        num_workers: DataLoader worker processes (useful for file- or tomogram-backed sets).
        amp: autocast to bfloat16/float16 on CUDA, to bfloat16 on CPUs with native
            bfloat16 (``devices.amp_dtype``); False: float32.
        class_numbers: class number of each output for a bare ``Classifier``.
        check_voxel_size: refuse data at another voxel size than the checkpoint's.
        distributed: a ``distributed.DistributedContext``; None detects torchrun.
        tta: test-time augmentation: average the class probabilities over the box as
            given and ``tta - 1`` fixed, near-uniform 3D rotations of it (the same for
            every particle, so results are deterministic). None: what the classifier
            was trained for (its checkpoint's ``config["tta"]``; 1 for older ones).
            The embeddings are always those of the unrotated box.
        temperature: divide the logits by this before the softmax; None: the
            checkpoint's calibrated temperature (1 when it has none, or for a bare model).

    Yields:
        ``status.Progress(stage="predict", step=batches done, n_steps=batches)`` after
        each batch, then one ``Predictions`` (rows in the order of ``data``). Under
        torchrun only rank 0 yields the ``Predictions``.

    Raises:
        InputError: checkpoint for another box size or voxel size, unknown device.
        DeviceOutOfMemoryError: a single particle does not fit on the GPU.
    """
    import torch

    from napari_cryossl.io.errors import InputError
    from napari_cryossl.nn.augment import rotate_3d, tta_rotations
    from napari_cryossl.nn.devices import (
        amp_dtype,
        autocast,
        memory_format,
        select_device,
        to_device,
    )
    from napari_cryossl.nn.distributed import DistributedContext
    from napari_cryossl.nn.models import for_inference

    if int(batch_size) < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    t0 = time.perf_counter()
    dev = select_device(device)
    ctx = distributed if distributed is not None else DistributedContext.from_environment(dev)
    model, classes, names, state = load_classifier(
        model_or_checkpoint, box_size=data.box_size, class_numbers=class_numbers
    )
    if check_voxel_size:
        where = (
            str(model_or_checkpoint)
            if isinstance(model_or_checkpoint, str | Path)
            else "classifier"
        )
        _check_voxel_size(state, data, where)
    dtype = amp_dtype(dev, amp)
    model = for_inference(model, dtype).to(dev, memory_format=memory_format(dev))
    if tta is None:
        tta = int(((state or {}).get("config") or {}).get("tta") or 1)
    if int(tta) < 1:
        raise InputError(f"test-time augmentation needs at least 1 view, got {tta}")
    views = tta_rotations(int(tta)).to(dev)
    t_scale = checkpoint_temperature(state) if temperature is None else float(temperature)
    if not t_scale > 0:
        raise InputError(f"the temperature must be positive, got {temperature}")

    rows = ctx.shard(len(data))
    batches = [rows[i : i + int(batch_size)] for i in range(0, len(rows), int(batch_size))]
    loader = batch_loader(data, batches, num_workers=num_workers, pin_memory=dev.type == "cuda")
    n_classes = len(classes)
    feature_dim = int(model.feature_dim)
    probs = np.zeros((len(rows), n_classes), dtype=np.float32)
    emb = np.zeros((len(rows), feature_dim), dtype=np.float32)
    chunk = [int(batch_size)]

    def forward(x):
        with autocast(dev, dtype):
            e = model.encoder(x)
            logits = model.head(e)
        p = torch.softmax(logits.float() / t_scale, dim=1)
        for rotation in views[1:]:
            xr = rotate_3d(x, rotation.expand(x.shape[0], 3, 3))
            with autocast(dev, dtype):
                p = p + torch.softmax(model(xr).float() / t_scale, dim=1)
        return p / len(views), e.float()

    done = 0
    with torch.inference_mode():
        for k, (boxes, _labels, _idx) in enumerate(loader):
            x = to_device(boxes, dev)
            p, e = forward_in_chunks(forward, x, chunk, dev)
            n = x.shape[0]
            probs[done : done + n] = p.cpu().numpy()
            emb[done : done + n] = e.cpu().numpy()
            done += n
            yield Progress(
                stage="predict",
                step=k + 1,
                n_steps=len(batches),
                unit="batch",
                metrics={"particles": done, "batch_size": chunk[0]},
                elapsed_s=time.perf_counter() - t0,
            )
    if ctx.enabled:
        parts = ctx.gather_to_main((probs, emb))
        if not ctx.is_main:
            return
        probs = np.concatenate([p for p, _ in parts])
        emb = np.concatenate([e for _, e in parts])
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    yield Predictions(
        probabilities=probs,
        class_numbers=classes[best].astype(np.int64),
        confidence=probs[np.arange(len(probs)), best].astype(np.float32),
        embeddings=emb,
        classes=classes,
        class_names=names,
        temperature=t_scale,
    )


def predict(
    model_or_checkpoint,
    data,
    *,
    batch_size: int = PredictSettings.batch_size,
    device="auto",
    num_workers: int = 0,
    amp: bool = True,
    class_numbers=None,
    check_voxel_size: bool = True,
    distributed=None,
    tta: int | None = None,
    temperature: float | None = None,
) -> Predictions | None:
    """Classify every particle of ``data`` (see ``iter_predict`` for the arguments).

    Returns:
        ``Predictions`` in the row order of ``data``; None on torchrun ranks other than 0.
    """
    result = None
    for item in iter_predict(
        model_or_checkpoint,
        data,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        amp=amp,
        class_numbers=class_numbers,
        check_voxel_size=check_voxel_size,
        distributed=distributed,
        tta=tta,
        temperature=temperature,
    ):
        if isinstance(item, Predictions):
            result = item
    return result
