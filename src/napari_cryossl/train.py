"""Pretraining and fine-tuning loops: generators of ``TrainStatus`` that can be stopped.

There is one loop (``_train_epochs``), driven the same way by the napari widgets (inside
a ``thread_worker``), the CLI (under a tqdm bar) and the tests (directly)::

    for status in iter_finetune(data, FinetuneConfig(epochs=20), "classifier.pt"):
        print(status.step, status.n_steps, status.loss, status.metrics)

- A ``TrainStatus`` is yielded after every optimiser step (``event="step"``), after every
  epoch with the epoch's metrics (``event="epoch"``), and once at the end
  (``event="done"``, ``done=True``).
- Stopping: closing the generator (``generator.close()``, which is what napari's
  ``worker.quit()`` and the CLI's Ctrl-C do) or a ``should_stop()`` callable returning
  True ends the run within one step. The ``try/finally`` around the loop writes a valid
  checkpoint of the last completed step first, so a stopped run loses nothing.
- ``resume=True`` continues a stopped run (or a finished one run with ``keep_state``): weights,
  optimiser, learning-rate schedule, the MoCo queue and momentum encoder, the position
  in the epoch and the random-number state. A run stopped after step k and resumed gives
  the same weights as a run that was never stopped (same machine, one process).
- ``run(generator, TrainingCallbacks(on_step, on_epoch, should_stop))`` drives a
  generator with callbacks and returns the last status.

Checkpoints (``models.save_checkpoint``: atomic, ``torch.load(weights_only=True)``) carry
the preset, box size, voxel size, normalisation, method, epoch, and for classifiers the
sorted class numbers and names. ``out`` is what a user keeps and moves around: weights
only (pretraining: the encoder after every epoch and when stopped; fine-tuning: the
best-validation classifier). The full training state (optimiser, schedule, MoCo key
encoder and queue, random state) goes to ``<out stem>.last<suffix>``, which ``resume``
reads; a stopped run keeps it, a finished one deletes it unless ``keep_state`` is set;
see ``last_checkpoint_path``.

On CUDA the loops use autocast (bfloat16, or float16 with a gradient scaler), the
``channels_last_3d`` layout, pinned host memory with ``non_blocking`` copies, and run
the augmentation on the GPU. An out-of-memory error saves the checkpoint and raises
``devices.DeviceOutOfMemoryError`` telling the user to lower ``--batch-size`` (and to
``--resume``). Under ``torchrun`` the loops use DistributedDataParallel; see
``distributed.py`` and ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryossl.options import (
    DEVICE_HELP,
    MODEL_PRESETS,
    RECIPE_NAMES,
    SSL_METHODS,
    WORKERS_HELP,
    option,
)

# The status type lives in status.py (predict.py yields it too); re-exported here.
from napari_cryossl.status import TrainStatus

__all__ = [
    "FINETUNE_AUGMENT",
    "FinetuneConfig",
    "PretrainConfig",
    "TrainStatus",
    "TrainingCallbacks",
    "iter_finetune",
    "iter_pretrain",
    "last_checkpoint_path",
    "run",
    "split_labelled",
]

#: The paper's fine-tuning augmentation (``SubtomogramAugment`` arguments; recipe
#: "paper"): rotations about the beam axis by up to 45°, mild crops, shifts and scaling.
FINETUNE_AUGMENT: dict[str, Any] = {
    "crop_p": 0.25,
    "crop_scale": (0.8, 1.0),
    "affine_p": 0.5,
    "rotate_z_deg": 45.0,
    "translate": 0.05,
    "scale": 0.05,
}

#: The default recipe's augmentation: every box gets a uniform random 3D rotation, a
#: shift of up to 10 % of the box along each axis and ±5 % scaling (particles lie in
#: every orientation; the rotated wedge is left as it is: docs/training.md).
ROTATION_AUGMENT: dict[str, Any] = {
    "crop_p": 0.0,
    "affine_p": 1.0,
    "rotation": "so3",
    "translate": 0.1,
    "scale": 0.05,
}

#: Pretraining views of the default recipe: every view a uniform random 3D rotation,
#: shifted by up to 10 % of the box, scaled ±10 %, and half of them a random resized
#: crop (50-100 % of the volume): two views of one particle differ by what a particle
#: in another orientation and position would, so the encoder learns to ignore that.
PRETRAIN_ROTATION_AUGMENT: dict[str, Any] = {
    "crop_p": 0.5,
    "crop_scale": (0.5, 1.0),
    "affine_p": 1.0,
    "rotation": "so3",
    "translate": 0.1,
    "scale": 0.1,
}

#: Pretraining recipes (``PretrainConfig.recipe``). "default": 3D-rotation views for
#: every method and, for MoCo, Adam lr 1e-3 and momentum 0.99 (measured with a linear
#: probe, docs/training.md); "paper": Gupta et al.'s views and each method's settings.
PRETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "default": {"augment": PRETRAIN_ROTATION_AUGMENT, "moco": {"lr": 1e-3, "momentum": 0.99}},
    "paper": {"augment": None},
}

#: Help of the ``keep_state`` option of both training settings.
KEEP_STATE_HELP = (
    "keep the resumable training state (<out>.last.pt) when the run finishes, to "
    "continue it later with more epochs; a stopped run always keeps it"
)

#: Epochs of a recipe on a GPU when ``epochs`` is not given: accuracy at low SNR keeps
#: rising with optimiser steps (SNR 0.05, all labels: 19.5 / 21.9 / 28.3 % at 30 / 60 /
#: 120 epochs, docs/benchmarks.md), which a GPU affords and a CPU does not.
GPU_EPOCHS: dict[str, int] = {"default": 120}

#: Fine-tuning recipes (``FinetuneConfig.recipe``): every ``FinetuneConfig`` field left
#: at None takes the recipe's value. "default" was chosen by measurement on the paper's
#: simulated benchmark (docs/training.md): few labels and CPU-sized budgets need every
#: orientation in the augmentation, a network that pools globally (``rb3d-small``),
#: AdamW with warm-up, class-balanced batches and a number of optimiser steps that does
#: not shrink with the label count. "paper" is Gupta et al. 2022's protocol, kept to
#: reproduce it.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        "preset": "rb3d-small",
        "epochs": 30,
        "min_steps": 1500,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.05,
        "momentum": 0.9,
        "warmup": 0.05,
        "balanced": True,
        "label_smoothing": 0.1,
        "augment_options": ROTATION_AUGMENT,
        "dropout": 0.3,
        "tta": 8,
    },
    "paper": {
        "preset": "rb3d",
        "epochs": 50,
        "min_steps": 0,
        "batch_size": 16,
        "optimizer": "sgd",
        "lr": 5e-4,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "warmup": 0.0,
        "balanced": False,
        "label_smoothing": 0.0,
        "augment_options": FINETUNE_AUGMENT,
        "dropout": 0.5,
        "tta": 1,
    },
}

#: How a fine-tuning run starts its last layer (``FinetuneConfig.head_init``).
HEAD_INITS = ("random", "probe")


# --------------------------------------------------------------------------- driving a run


@dataclass
class TrainingCallbacks:
    """Hooks for ``run``: called with each status; ``should_stop`` polled after each.

    Attributes:
        on_step: called with every status of ``event="step"``.
        on_epoch: called with every ``event="epoch"`` status (metrics filled).
        should_stop: returns True to stop; the generator is closed, which writes the
            checkpoint.
    """

    on_step: Callable[[TrainStatus], Any] | None = None
    on_epoch: Callable[[TrainStatus], Any] | None = None
    should_stop: Callable[[], bool] | None = None


def run(generator: Iterator[TrainStatus], callbacks: TrainingCallbacks | None = None):
    """Drive a training generator to its end (or until ``should_stop``).

    Args:
        generator: from ``iter_pretrain`` or ``iter_finetune``.
        callbacks: optional hooks.

    Returns:
        The last ``TrainStatus`` (``event="stopped"`` when stopped by ``should_stop``),
        or None if the generator yielded nothing.
    """
    cb = callbacks or TrainingCallbacks()
    last = None
    try:
        for status in generator:
            last = status
            if status.event == "step" and cb.on_step is not None:
                cb.on_step(status)
            elif status.event == "epoch" and cb.on_epoch is not None:
                cb.on_epoch(status)
            if (
                status.event in ("step", "epoch")
                and cb.should_stop is not None
                and cb.should_stop()
            ):
                generator.close()  # runs the loop's cleanup: the checkpoint is written
                last = dataclasses.replace(status, event="stopped")
                break
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    return last


# --------------------------------------------------------------------------- configs


@dataclass
class PretrainConfig:
    """Self-supervised pretraining settings.

    Attributes:
        recipe: "default" (3D-rotation views; MoCo at lr 1e-3, m 0.99) or "paper"
            (Gupta et al.'s views and settings); see ``PRETRAIN_RECIPES``.
        method: "moco", "simclr" or "swav".
        preset: encoder preset ("rb3d-small", the measured default; "rb3d", the paper's).
        epochs, batch_size, lr, weight_decay: None takes ``ssl.SSL_DEFAULTS[method]``
            (MoCo: 200 epochs, batch 16, Adam lr 1e-4, weight decay 1e-4). The batch is
            the global batch (split over torchrun processes).
        device: "auto", "cpu", "cuda" or "cuda:N".
        seed: seeds weights, data order and augmentation.
        num_workers: DataLoader worker processes.
        amp: mixed precision on CUDA.
        save_every: write the checkpoint every this many epochs (and always at the end
            and when stopped).
        augment: ``SubtomogramAugment`` arguments (None: the recipe's views).
        ssl_options: further ``build_ssl`` hyper-parameters (e.g. ``queue_size``).
        encoder_options: ``build_encoder`` overrides (e.g. ``batch_norm=True``).
        gather_distributed: with several processes, share negatives across them
            (MoCo: one queue filled with every rank's keys; SimCLR: negatives from
            every rank; SwAV: Sinkhorn over every rank's batch).
    """

    method: str = option("moco", "contrastive objective", choices=SSL_METHODS)
    preset: str = option(
        "rb3d-small",
        "encoder: rb3d-small, the measured default (global pooling, docs/training.md); "
        "rb3d, the paper's network (needs a GPU)",
        choices=MODEL_PRESETS,
    )
    recipe: str = option(
        "default",
        "default: 3D-rotation views (MoCo at lr 1e-3, m 0.99; docs/training.md); "
        "paper: Gupta et al.'s views and settings",
        choices=RECIPE_NAMES,
    )
    epochs: int | None = option(
        None, "passes over all particles (default: the method's, 200 for MoCo)", minimum=1
    )
    batch_size: int | None = option(
        None, "subtomograms per step (default: the method's, 16 for MoCo)", minimum=1
    )
    lr: float | None = option(None, "learning rate (default: the method's)", minimum=0)
    weight_decay: float | None = None
    device: str = option("auto", DEVICE_HELP)
    seed: int = option(0, "seeds the weights, the data order and the augmentation")
    num_workers: int = option(0, WORKERS_HELP, minimum=0, flag="--workers")
    keep_state: bool = option(False, KEEP_STATE_HELP)
    amp: bool = True
    save_every: int = 1
    augment: dict[str, Any] | None = None
    ssl_options: dict[str, Any] | None = None
    encoder_options: dict[str, Any] | None = None
    gather_distributed: bool = True

    def hyperparameters(self) -> dict[str, Any]:
        """``SSL_DEFAULTS[method]`` with this config's non-None values on top."""
        from napari_cryossl.devices import InputError
        from napari_cryossl.ssl import SSL_DEFAULTS

        method = str(self.method).lower()
        if method not in SSL_DEFAULTS:
            raise InputError(
                f"unknown pretraining method {self.method!r}; choose one of {sorted(SSL_DEFAULTS)}"
            )
        if self.recipe not in PRETRAIN_RECIPES:
            raise InputError(
                f"unknown pretraining recipe {self.recipe!r}; choose one of "
                f"{', '.join(PRETRAIN_RECIPES)}"
            )
        hp = dict(SSL_DEFAULTS[method])
        hp.update(PRETRAIN_RECIPES[self.recipe].get(method, {}))
        hp.update(self.ssl_options or {})
        for key in ("epochs", "batch_size", "lr", "weight_decay"):
            value = getattr(self, key)
            if value is not None:
                hp[key] = value
        _check_positive(hp, ("epochs", "batch_size"), ("lr",))
        return hp


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning settings; None takes the value of ``recipe`` (``RECIPES``).

    Attributes:
        recipe: "default" (chosen by measurement, docs/training.md) or "paper"
            (Gupta et al. 2022: SGD lr 5e-4, cosine, batch 16, 50 epochs, z-rotations).
        preset: encoder preset for a random start (an ``init`` checkpoint brings its
            own); default recipe "rb3d-small", paper "rb3d".
        epochs: evaluation rounds: the validation split is scored and the best
            classifier kept after each.
        min_steps: optimiser steps at least, however few the labels: with balanced
            batches an epoch has ``max(ceil(n_train / batch), ceil(min_steps / epochs))``
            steps (default 1,500; paper 0).
        batch_size: global batch (default 32, paper 16).
        optimizer: "adamw" (default) or "sgd" (paper, with ``momentum``).
        lr, weight_decay, momentum: optimiser settings (default 2e-3, 0.05; paper 5e-4,
            1e-4, momentum 0.9).
        warmup: fraction of the steps with a linear learning-rate warm-up before the
            cosine decay to 0 (default 0.05, paper 0).
        balanced: class-balanced batches (each class drawn equally often, cycling
            through its particles) instead of plain shuffled epochs.
        label_smoothing: of the cross-entropy (default 0.1, paper 0).
        label_fraction: use this stratified random fraction of the labelled particles
            (at least one per class).
        val_fraction: hold out this stratified fraction for validation; a class with
            too few labels keeps all of them for training (reported in ``metrics``).
        freeze_encoder: linear probe: the encoder is frozen (eval mode, no gradients)
            and only the last layer learns.
        head_init: "random", or "probe": start the last layer at a logistic regression
            fitted on the frozen encoder's embeddings of the training particles (LP-FT,
            Kumar et al. 2022).
        augment: augment the training batches (``augment_options``).
        augment_options: ``SubtomogramAugment`` arguments (default ``ROTATION_AUGMENT``,
            paper ``FINETUNE_AUGMENT``).
        dropout: dropout before the last layer (default 0.3, paper 0.5).
        tta: test-time augmentation stored with the classifier: prediction averages
            the class probabilities over this many fixed rotations (1: none).
        class_names: {class number: name} stored in the checkpoint.
        device, seed, num_workers, amp, save_every: as in ``PretrainConfig``.
        encoder_options: ``build_encoder`` overrides for a random start.
    """

    recipe: str = option(
        "default",
        "default: the recipe chosen by measurement (rb3d-small, 3D rotations, AdamW, "
        "balanced batches, >= 1,500 steps, 8-view test-time augmentation; docs/training.md); "
        "paper: Gupta et al. 2022 (rb3d, SGD lr 5e-4, 50 epochs, z-rotations)",
        choices=RECIPE_NAMES,
    )
    preset: str | None = option(
        None,
        "encoder for a random start (default: the encoder's when one is given, else the "
        "recipe's: rb3d-small, paper rb3d)",
        choices=MODEL_PRESETS,
    )
    epochs: int | None = option(
        None, "validation rounds; the best classifier is kept (default: the recipe's)", minimum=1
    )
    min_steps: int | None = option(
        None,
        "optimiser steps at least, however few the labels: with 10 labels per class an "
        "epoch is a step or two (default: the recipe's)",
        minimum=0,
    )
    batch_size: int | None = option(
        None, "labelled subtomograms per step (default: the recipe's)", minimum=1
    )
    optimizer: str | None = None
    lr: float | None = option(None, "learning rate (default: the recipe's)", minimum=0)
    weight_decay: float | None = None
    momentum: float | None = None
    warmup: float | None = None
    balanced: bool | None = None
    label_smoothing: float | None = None
    label_fraction: float = option(
        1.0, "use this stratified fraction of the labels", minimum=1e-9, maximum=1.0
    )
    val_fraction: float = option(
        0.2, "labels held out for validation", minimum=0.0, maximum=0.9
    )
    freeze_encoder: bool = option(False, "linear probe: train only the last layer")
    head_init: str = option(
        "random",
        "start the last layer at random, or at a linear probe on the encoder's embeddings "
        "(LP-FT: helps with few labels)",
        choices=("random", "probe"),
    )
    augment: bool = option(
        True, "no augmentation while fine-tuning", flag="--no-augment", negate=True
    )
    augment_options: dict[str, Any] | None = None
    dropout: float | None = None
    tta: int | None = option(
        None,
        "views averaged at prediction, stored in the classifier (default: the recipe's)",
        minimum=1,
    )
    class_names: dict[int, str] | None = None
    device: str = option("auto", DEVICE_HELP)
    seed: int = option(0, "seeds the label split, the weights and the augmentation")
    num_workers: int = option(0, WORKERS_HELP, minimum=0, flag="--workers")
    keep_state: bool = option(False, KEEP_STATE_HELP)
    amp: bool = True
    save_every: int = 1
    encoder_options: dict[str, Any] | None = None

    def resolved(self, device_type: str | None = None) -> FinetuneConfig:
        """A copy with every None taken from ``RECIPES[recipe]`` (checked); on a GPU
        (``device_type`` "cuda") the epochs from ``GPU_EPOCHS`` when not given."""
        from napari_cryossl.devices import InputError

        if self.recipe not in RECIPES:
            raise InputError(
                f"unknown fine-tuning recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}"
            )
        values = {
            key: value
            for key, value in RECIPES[self.recipe].items()
            if getattr(self, key) is None
        }
        if self.epochs is None and device_type == "cuda" and self.recipe in GPU_EPOCHS:
            values["epochs"] = GPU_EPOCHS[self.recipe]
        out = dataclasses.replace(self, **values)
        out.check()
        return out

    def check(self) -> None:
        """Raise ``InputError`` for values no run can use (on a resolved config)."""
        from napari_cryossl.devices import InputError

        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        _check_positive(
            values,
            tuple(k for k in ("epochs", "batch_size") if k in values),
            tuple(k for k in ("lr",) if k in values),
        )
        if not 0.0 < self.label_fraction <= 1.0:
            raise InputError(f"label fraction must be in (0, 1], got {self.label_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head_init not in HEAD_INITS:
            raise InputError(
                f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}"
            )
        if self.optimizer is not None and self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.warmup is not None and not 0.0 <= self.warmup < 1.0:
            raise InputError(f"warm-up fraction must be in [0, 1), got {self.warmup}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        for key in ("min_steps", "tta"):
            v = getattr(self, key)
            if v is not None and (int(v) != v or v < (1 if key == "tta" else 0)):
                raise InputError(f"{key.replace('_', ' ')} must be an integer >= "
                                 f"{1 if key == 'tta' else 0}, got {v}")


def _check_positive(values: dict, ints: tuple[str, ...], floats: tuple[str, ...]) -> None:
    from napari_cryossl.devices import InputError

    for key in ints:
        v = values[key]
        if int(v) != v or int(v) < 1:
            raise InputError(f"{key.replace('_', ' ')} must be a positive integer, got {v}")
    for key in floats:
        v = float(values[key])
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{key.replace('_', ' ')} must be positive, got {values[key]}")


def last_checkpoint_path(out: str | Path) -> Path:
    """Where fine-tuning keeps its resumable state: ``classifier.pt`` -> ``classifier.last.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


# --------------------------------------------------------------------------- labels


def split_labelled(
    class_numbers,
    *,
    label_fraction: float = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    source: str = "particle set",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stratified label subset and train/validation split of the labelled rows.

    Only rows with class number > 0 take part. Per class with n labels:
    ``k = max(1, round(label_fraction * n))`` are drawn at random, and of those
    ``round(val_fraction * k)`` go to validation, unless that leaves no training
    example or no validation example, in which case all k stay in training.

    Args:
        class_numbers: (N,) 1-based classes, 0 = unlabelled.
        label_fraction: fraction of each class's labels to use, (0, 1].
        val_fraction: fraction of the used labels to validate on, [0, 1).
        seed: the split is a function of (class_numbers, fractions, seed).
        source: name used in error messages (the STAR file).

    Returns:
        ``(train_rows, val_rows, info)``: sorted int64 row indices, and a dict with
        ``classes`` (sorted class numbers), ``counts`` ({class: labels}),
        ``classes_without_validation`` and ``note`` (text or "").

    Raises:
        InputError: fewer than 2 labelled classes.
    """
    from napari_cryossl.devices import InputError

    labels = np.asarray(class_numbers, dtype=np.int64)
    classes, counts = np.unique(labels[labels > 0], return_counts=True)
    if len(classes) < 2:
        found = (
            "no labelled particles"
            if len(classes) == 0
            else f"only class {int(classes[0])} ({int(counts[0])} particles)"
        )
        raise InputError(
            f"{source}: need labelled particles of at least 2 classes; found {found}. "
            "Label some particles of each class (rlnClassNumber >= 1) first"
        )
    rng = np.random.default_rng(seed)
    train, val, no_val = [], [], []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        k = max(1, int(round(label_fraction * len(rows))))
        rows = rows[:k]
        n_val = int(round(val_fraction * k))
        if val_fraction > 0 and (n_val < 1 or n_val >= k):
            no_val.append(int(c))
            n_val = 0
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    note = ""
    if no_val and val_fraction > 0:
        note = (
            f"class{'es' if len(no_val) > 1 else ''} {', '.join(map(str, no_val))} "
            f"{'have' if len(no_val) > 1 else 'has'} too few labels for a validation split; "
            "all of them are used for training"
        )
    info = {
        "classes": [int(c) for c in classes],
        "counts": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "classes_without_validation": no_val,
        "note": note,
    }
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), info


# --------------------------------------------------------------------------- the loop


class _Job:
    """What differs between pretraining and fine-tuning; ``_train_epochs`` does the rest.

    Subclasses set the attributes below in ``__init__`` and implement the methods.
    ``epoch`` / ``step_in_epoch`` / ``global_step`` are the progress counters that
    checkpoints store and ``resume`` restores.
    """

    stage = ""
    out: Path
    device: Any
    ctx: Any
    seed: int
    n_epochs: int
    save_every: int
    n_train: int
    local_batch: int
    drop_last: bool
    num_workers: int
    optimizer: Any
    epoch = 0
    step_in_epoch = 0
    global_step = 0

    # -- data order ----------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches (positions in the training rows) for ``epoch``.

        ``DistributedSampler`` (also with one process) draws the permutation from
        ``seed + epoch``; so a resumed run sees the same order, and with several
        processes local batch k of all ranks together is global batch k of one process.
        """
        sampler = self.ctx.sampler(
            self.n_train, shuffle=True, seed=self.seed, drop_last=self.ctx.enabled
        )
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        b = self.local_batch
        if self.drop_last and len(order) > b:
            order = order[: len(order) // b * b]
        return [order[i : i + b] for i in range(0, len(order), b)]

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the same on every rank and in every epoch)."""
        return len(self.epoch_batches(0))

    # -- hooks ---------------------------------------------------------------------------
    def loader(self, batches: list[np.ndarray]):
        raise NotImplementedError

    def train_step(self, boxes, labels) -> float:
        raise NotImplementedError

    def step_metrics(self) -> dict:
        """Shown with every step: the current learning rate (schedules change it)."""
        return {"lr": float(self.optimizer.param_groups[0]["lr"])}

    def end_epoch(self, mean_loss: float) -> dict:
        return {"train_loss": mean_loss}

    def save(self, *, reason: str) -> Path | None:
        """Write the resumable checkpoint (rank 0); return its path."""
        raise NotImplementedError

    def finish(self) -> Path | None:
        """After the last epoch: drop the resume state unless asked to keep it; return the
        file the user should use."""
        last = getattr(self, "last_path", None)
        if (
            self.ctx.is_main
            and last is not None
            and not getattr(self.config, "keep_state", False)
        ):
            Path(last).unlink(missing_ok=True)
        return self.out

    # -- shared helpers ------------------------------------------------------------------
    def progress_state(self) -> dict:
        return {
            "epoch": int(self.epoch),
            "step_in_epoch": int(self.step_in_epoch),
            "global_step": int(self.global_step),
            "n_epochs": int(self.n_epochs),
            "steps_per_epoch": int(self.steps_per_epoch),
            "world_size": int(self.ctx.world_size),
        }

    def restore_progress(self, progress: dict, where: Path) -> None:
        from napari_cryossl.devices import InputError

        if not isinstance(progress, dict):
            raise InputError(f"{where}: holds no training state to resume from")
        self.epoch = int(progress.get("epoch", 0))
        self.step_in_epoch = int(progress.get("step_in_epoch", 0))
        self.global_step = int(progress.get("global_step", 0))
        if self.step_in_epoch and (
            int(progress.get("steps_per_epoch", -1)) != self.steps_per_epoch
            or int(progress.get("world_size", 1)) != self.ctx.world_size
        ):
            # Another batch size, data set size or process count: the interrupted
            # epoch cannot be continued where it stopped; start it again.
            self.global_step -= self.step_in_epoch
            self.step_in_epoch = 0


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


def _oom_message(job: _Job, path: Path | None) -> str:
    saved = f"the checkpoint of the last completed step is in {path}; " if path else ""
    return (
        f"{job.device}: out of GPU memory while {job.stage} training with "
        f"{job.local_batch} subtomograms per step per GPU; {saved}lower --batch-size "
        "(e.g. halve it) and add --resume to continue"
    )


def _train_epochs(job: _Job, should_stop: Callable[[], bool] | None) -> Iterator[TrainStatus]:
    """The loop shared by pretraining and fine-tuning (see the module docstring)."""
    from napari_cryossl.devices import DeviceOutOfMemoryError, empty_cache, is_out_of_memory

    t0 = time.perf_counter()
    n_steps = job.n_epochs * job.steps_per_epoch
    dirty = False  # progress made since the last checkpoint
    saved = False  # a checkpoint was written by this call
    last_metrics: dict = {}

    def status(loss, metrics, **kw) -> TrainStatus:
        return TrainStatus(
            stage=job.stage,
            epoch=job.epoch,
            n_epochs=job.n_epochs,
            step=job.global_step,
            n_steps=n_steps,
            loss=loss,
            metrics=metrics,
            elapsed_s=time.perf_counter() - t0,
            **kw,
        )

    try:
        while job.epoch < job.n_epochs:
            batches = job.epoch_batches(job.epoch)[job.step_in_epoch :]
            losses = []
            for boxes, labels, _rows in job.loader(batches):
                # Checked before every step, and on every rank together: a rank that
                # stopped alone would leave the others waiting in the gradient all-reduce.
                if job.ctx.any(should_stop is not None and bool(should_stop()), job.device):
                    path = job.save(reason="stop")
                    dirty, saved = False, True
                    yield status(
                        losses[-1] if losses else None, {}, checkpoint=path, event="stopped"
                    )
                    return
                loss = job.train_step(boxes, labels)
                job.global_step += 1
                job.step_in_epoch += 1
                dirty = True
                losses.append(loss)
                yield status(loss, job.step_metrics())
            job.epoch += 1
            job.step_in_epoch = 0
            mean_loss = job.ctx.mean(float(np.mean(losses)) if losses else float("nan"))
            last_metrics = job.end_epoch(mean_loss)
            path = None
            if job.epoch % job.save_every == 0 or job.epoch == job.n_epochs:
                path = job.save(reason="epoch")
                dirty, saved = False, True
            yield status(mean_loss, last_metrics, checkpoint=path, event="epoch")
        if dirty or not saved:
            job.save(reason="epoch")
            dirty, saved = False, True
        final = job.finish()
        job.ctx.barrier()
        yield status(None, dict(last_metrics), done=True, checkpoint=final, event="done")
    except GeneratorExit:
        # generator.close(): napari's worker.quit(), the CLI's Ctrl-C, run()'s should_stop.
        if dirty or not saved:
            job.save(reason="stop")
        raise
    except BaseException as exc:
        path = None
        if dirty or not saved:
            try:
                empty_cache(job.device)
                path = job.save(reason="error")
            except Exception as save_exc:  # keep the original error; report the second
                warnings.warn(
                    f"could not save a checkpoint after an error: {save_exc}", stacklevel=2
                )
        if is_out_of_memory(exc):
            raise DeviceOutOfMemoryError(_oom_message(job, path)) from exc
        raise


# --------------------------------------------------------------------------- pretraining


class _PretrainJob(_Job):
    stage = "pretrain"

    def __init__(self, data, config: PretrainConfig, out, *, resume: bool, distributed):
        import torch

        from napari_cryossl.augment import SubtomogramAugment
        from napari_cryossl.devices import (
            InputError,
            amp_dtype,
            make_grad_scaler,
            memory_format,
            select_device,
        )
        from napari_cryossl.distributed import DistributedContext
        from napari_cryossl.models import build_encoder, load_checkpoint
        from napari_cryossl.ssl import build_ssl

        self.config = config
        self.data = data
        self.out = Path(out)
        hp = config.hyperparameters()
        self.method = str(config.method).lower()
        self.hp = hp
        self.device = select_device(config.device)
        self.ctx = (
            distributed
            if distributed is not None
            else DistributedContext.from_environment(self.device)
        )
        self.seed = int(config.seed)
        self.n_epochs = int(hp["epochs"])
        self.save_every = max(int(config.save_every), 1)
        self.num_workers = int(config.num_workers)
        self.n_train = len(data)
        source = _source(data)
        min_batch = 1 if self.method == "moco" else 2
        if self.n_train < min_batch * self.ctx.world_size:
            raise InputError(
                f"{source}: {self.n_train} particle(s) are too few to pretrain with "
                f"{self.method} (needs at least {min_batch} per batch"
                f"{' per process' if self.ctx.enabled else ''})"
            )
        global_batch = int(hp["batch_size"])
        self.local_batch = max(global_batch // self.ctx.world_size, min_batch)
        # Drop the last, partial batch when the set holds more than one batch: a tiny
        # batch gives a noisy contrastive loss (and BatchNorm heads need 2 samples).
        self.drop_last = True

        torch.manual_seed(self.seed)
        encoder = build_encoder(config.preset, data.box_size, **(config.encoder_options or {}))
        ssl_overrides = {k: v for k, v in hp.items() if k in _ssl_keys(self.method)}
        self.objective = build_ssl(self.method, encoder, **ssl_overrides)
        self.objective.to(self.device, memory_format=memory_format(self.device))
        if self.ctx.enabled:
            self._share_negatives(config.gather_distributed)
        if self.ctx.enabled and self.device.type == "cuda":
            # BatchNorm (projection heads, batch_norm=True encoders) over the global batch.
            self.objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
        views = config.augment
        if views is None:
            views = PRETRAIN_RECIPES.get(config.recipe, {}).get("augment")
        self.augment = SubtomogramAugment(**dict(views or {}))
        self.optimizer = self.objective.configure_optimizer()
        self.dtype = amp_dtype(self.device, config.amp)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.trainable = self.objective
        if self.ctx.enabled:
            # The MoCo queue is a buffer: never broadcast it from rank 0 (each rank
            # enqueues the gathered keys itself); SwAV freezes its prototypes for a while.
            self.trainable = self.ctx.wrap(
                self.trainable,
                self.device,
                broadcast_buffers=False,
                find_unused_parameters=self.method == "swav",
            )
        self.last_path = last_checkpoint_path(self.out)
        # The resume state lives in <out>.last.pt; older versions kept it in <out> itself.
        state_file = self.last_path if self.last_path.is_file() else self.out
        if resume and state_file.is_file():
            self._state_file = state_file
            state = load_checkpoint(
                state_file,
                kind="encoder",
                preset=config.preset,
                box_size=data.box_size,
                map_location=self.device,
            )
            if state.get("method") != self.method:
                raise InputError(
                    f"{state_file}: was pretrained with {state.get('method')!r}, not "
                    f"{self.method!r}; resume with --method {state.get('method')}"
                )
            self._restore(state)
        self._ssl_rng_seed()

    def _share_negatives(self, gather: bool) -> None:
        crit = getattr(self.objective, "criterion", None)
        if crit is None or not gather:
            return
        if hasattr(crit, "gather_distributed"):
            crit.gather_distributed = True
        bank = getattr(crit, "memory_bank", None)
        if bank is not None and hasattr(bank, "gather_distributed"):
            bank.gather_distributed = True
        if hasattr(crit, "sinkhorn_gather_distributed"):
            crit.sinkhorn_gather_distributed = True

    def _ssl_rng_seed(self) -> None:
        # Every rank starts from the same weights (same seed) but must draw different
        # augmentations for its different particles.
        if self.ctx.enabled and self.ctx.rank > 0:
            import torch

            torch.manual_seed(self.seed + 7919 * self.ctx.rank + self.global_step)

    def _restore(self, state: dict) -> None:
        from napari_cryossl.devices import InputError

        model = {f"encoder.{k}": v for k, v in state["model"].items()}
        extra = state.get("ssl_state")
        where = getattr(self, "_state_file", self.out)
        if extra is None or state.get("optimizer") is None:
            raise InputError(
                f"{where}: holds no pretraining state to resume from (the run finished and "
                "its state was dropped; pass --keep-state to keep it); start a new run "
                "without --resume"
            )
        try:
            self.objective.load_state_dict({**model, **extra})
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(
                f"{where}: does not match this pretraining setup ({exc}); start a new "
                "run without --resume or use the same options"
            ) from exc
        queue = state.get("ssl_queue")
        bank = getattr(getattr(self.objective, "criterion", None), "memory_bank", None)
        if queue and bank is not None and tuple(queue["bank"].shape) == tuple(bank.bank.shape):
            bank.bank.copy_(queue["bank"].to(bank.bank.device))
            bank.bank_ptr.copy_(queue["ptr"].to(bank.bank_ptr.device))
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.restore_progress(state.get("progress"), where)
        _set_rng_state(state.get("rng"), self.device)
        self.objective.progress = min(self.global_step / max(self.total_steps, 1), 1.0)

    @property
    def total_steps(self) -> int:
        return self.n_epochs * self.steps_per_epoch

    def loader(self, batches):
        return _loader(self, batches, np.arange(self.n_train))

    def train_step(self, boxes, labels) -> float:
        from napari_cryossl.devices import autocast, to_device

        x = to_device(boxes, self.device)
        self.trainable.train()
        view1 = self.augment(x)
        view2 = self.augment(x)
        with autocast(self.device, self.dtype):
            loss = self.trainable(view1, view2)
        _backward_step(self, loss)
        self.objective.after_optimizer_step((self.global_step + 1) / max(self.total_steps, 1))
        value = float(loss.detach().float())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"pretraining loss became {value} at step {self.global_step + 1}; lower the "
                "learning rate (--lr) or turn off mixed precision"
            )
        return value

    def save(self, *, reason: str) -> Path | None:
        from napari_cryossl.models import checkpoint_state, save_checkpoint

        if not self.ctx.is_main:
            return self.out
        obj = self.objective
        extra = {k: v for k, v in obj.state_dict().items() if not k.startswith("encoder.")}
        bank = getattr(getattr(obj, "criterion", None), "memory_bank", None)
        queue = None
        if bank is not None and bank.bank.numel() > 0:
            queue = {"bank": bank.bank, "ptr": bank.bank_ptr}
        about = {
            "voxel_size": self.data.voxel_size,
            "method": self.method,
            "epoch": self.epoch,
            "config": _plain_config(self.config),
            "hyperparameters": dict(self.hp),
            "stopped": reason != "epoch",
        }
        # Everything resume needs (key encoder, queue, optimiser...) in <out>.last.pt;
        # the encoder a user keeps and moves around is its weights only.
        state = checkpoint_state(
            obj.encoder,
            **about,
            optimizer=self.optimizer.state_dict(),
            ssl_state=extra,
            ssl_queue=queue,
            progress=self.progress_state(),
            rng=_rng_state(self.device),
            grad_scaler=self.scaler.state_dict() if self.scaler is not None else None,
        )
        save_checkpoint(self.last_path, state)
        save_checkpoint(self.out, checkpoint_state(obj.encoder, **about))
        return self.out


def _ssl_keys(method: str) -> set[str]:
    from napari_cryossl.ssl import SSL_DEFAULTS

    return set(SSL_DEFAULTS[method])


def iter_pretrain(
    data,
    config: PretrainConfig,
    out,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    distributed=None,
) -> Iterator[TrainStatus]:
    """Contrastive self-supervised pretraining of an encoder on every particle.

    Labels are ignored. Each step loads a batch (pinned CPU memory), copies it to the
    device, makes two augmented views there (``SubtomogramAugment``), and minimises the
    method's loss (``ssl.build_ssl``). The encoder checkpoint ``out`` is what
    ``iter_finetune(init=out)`` starts from.

    Args:
        data: a ``SubtomogramSet`` (every particle is used).
        config: ``PretrainConfig``.
        out: encoder checkpoint to write (every ``save_every`` epochs, at the end, when
            stopped).
        resume: continue from ``out`` if it exists (else start afresh).
        should_stop: polled before every step; True stops (on every rank).
        distributed: a ``distributed.DistributedContext``; None detects torchrun.

    Yields:
        ``TrainStatus`` after every step, every epoch and at the end.

    Raises:
        InputError: unusable data (too few particles), settings or checkpoint.
        DeviceOutOfMemoryError: the GPU ran out of memory (checkpoint saved first).
    """
    job = _PretrainJob(data, config, out, resume=resume, distributed=distributed)
    return _train_epochs(job, should_stop)


# --------------------------------------------------------------------------- fine-tuning


class _FinetuneJob(_Job):
    stage = "finetune"

    def __init__(self, data, config: FinetuneConfig, out, *, init, resume: bool, distributed):
        import torch

        from napari_cryossl.augment import SubtomogramAugment
        from napari_cryossl.devices import (
            InputError,
            amp_dtype,
            make_grad_scaler,
            memory_format,
            select_device,
        )
        from napari_cryossl.distributed import DistributedContext
        from napari_cryossl.models import (
            Classifier,
            build_encoder,
            encoder_from_checkpoint,
            load_checkpoint,
        )

        asked_preset = config.preset  # None: whatever the init/resume checkpoint holds
        self.device = select_device(config.device)
        config = config.resolved(self.device.type)
        self.config = config
        self.data = data
        self.out = Path(out)
        self.last_path = last_checkpoint_path(self.out)
        self.ctx = (
            distributed
            if distributed is not None
            else DistributedContext.from_environment(self.device)
        )
        self.seed = int(config.seed)
        self.n_epochs = int(config.epochs)
        self.save_every = max(int(config.save_every), 1)
        self.num_workers = int(config.num_workers)
        self.source = _source(data)
        self.init = Path(init) if init is not None else None
        self.notes: list[str] = []

        resume_state = None
        if resume and self.last_path.is_file():
            resume_state = load_checkpoint(
                self.last_path,
                kind="classifier",
                preset=asked_preset,
                box_size=data.box_size,
                map_location="cpu",
            )
        labels = np.asarray(data.class_numbers, dtype=np.int64)
        if resume_state is not None:
            train_rows, val_rows, info = self._resume_split(resume_state, labels)
        else:
            train_rows, val_rows, info = split_labelled(
                labels,
                label_fraction=config.label_fraction,
                val_fraction=config.val_fraction,
                seed=self.seed,
                source=self.source,
            )
        self.train_rows, self.val_rows, self.split_info = train_rows, val_rows, info
        if info.get("note"):
            self.notes.append(info["note"])
        self.classes = np.asarray(info["classes"], dtype=np.int64)
        self.n_train = len(train_rows)
        if self.n_train < self.ctx.world_size:
            raise InputError(
                f"{self.source}: {self.n_train} training particles for "
                f"{self.ctx.world_size} processes; use fewer processes"
            )
        self.local_batch = max(int(config.batch_size) // self.ctx.world_size, 1)
        # Labelled sets are small: keep every example, including a partial last batch.
        self.drop_last = False

        self.balanced = bool(config.balanced)
        self.min_steps = int(config.min_steps or 0)
        torch.manual_seed(self.seed)
        preset = asked_preset
        if resume_state is not None:
            preset = resume_state["preset"]
            encoder = encoder_from_checkpoint(resume_state)
            self.method = resume_state.get("method", "finetune")
        elif self.init is not None:
            init_state = load_checkpoint(self.init, preset=preset, box_size=data.box_size)
            encoder = encoder_from_checkpoint(init_state)
            preset = init_state["preset"]
            self.method = f"finetune from {init_state.get('method') or 'checkpoint'}"
            trained_vs = init_state.get("voxel_size")
            if (
                trained_vs
                and data.voxel_size
                and abs(trained_vs - data.voxel_size) > 0.02 * trained_vs
            ):
                self.notes.append(
                    f"{self.init} was pretrained at {trained_vs:g} Å/voxel, the particles are "
                    f"{data.voxel_size:g} Å/voxel"
                )
        else:
            preset = config.preset
            encoder = build_encoder(preset, data.box_size, **(config.encoder_options or {}))
            self.method = "supervised"
        if config.freeze_encoder and "(linear probe)" not in self.method:
            self.method += " (linear probe)"
        self.preset = preset
        self.model = Classifier(encoder, len(self.classes), dropout=config.dropout)
        if config.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        self.model.to(self.device, memory_format=memory_format(self.device))
        if resume_state is None and config.head_init == "probe":
            self._head_from_probe()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                params, lr=config.lr, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.total_steps = max(self.n_epochs * self.steps_per_epoch, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dtype = amp_dtype(self.device, config.amp)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.augment = (
            SubtomogramAugment(**dict(config.augment_options)) if config.augment else None
        )
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(config.label_smoothing))
        self.trainable = self.ctx.wrap(self.model, self.device) if self.ctx.enabled else self.model
        self.best = {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}
        self._wrote_out = False
        self._correct = 0
        self._seen = 0
        if resume_state is not None:
            self._restore(resume_state)
        if self.ctx.enabled and self.ctx.rank > 0:
            torch.manual_seed(self.seed + 7919 * self.ctx.rank + self.global_step)

    # -- schedule and batches ---------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup`` of the steps, then a cosine decay to 0."""
        total = max(int(self.total_steps), 1)
        warm = int(round(float(self.config.warmup) * total))
        if step < warm:
            return (step + 1) / warm
        t = min(step - warm, total - warm) / max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        if not self.balanced:
            return len(self.epoch_batches(0))
        per_epoch = math.ceil(self.n_train / max(self.local_batch * self.ctx.world_size, 1))
        return max(per_epoch, math.ceil(self.min_steps / max(self.n_epochs, 1)), 1)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Class-balanced batches (``balanced``): every class is drawn equally often.

        Global batch k holds ``batch_size`` draws of a class chosen uniformly at random;
        each class cycles through random permutations of its particles, so none is
        repeated before all of its class have been seen. Rank r takes its slice of
        every global batch. Depends only on (seed, epoch, labels): resumable.
        """
        if not self.balanced:
            return super().epoch_batches(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        labels = np.asarray(self.data.class_numbers, dtype=np.int64)[self.train_rows]
        members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        global_batch = self.local_batch * self.ctx.world_size
        n_draws = self.steps_per_epoch * global_batch
        classes = rng.integers(0, len(members), n_draws)
        order = np.empty(n_draws, dtype=np.int64)
        for c, rows in enumerate(members):
            where = np.flatnonzero(classes == c)
            cycles = math.ceil(len(where) / len(rows)) if len(where) else 0
            pool = np.concatenate([rng.permutation(rows) for _ in range(cycles)] or [rows[:0]])
            order[where] = pool[: len(where)]
        r, b = self.ctx.rank, self.local_batch
        return [
            order[k * global_batch + r * b : k * global_batch + (r + 1) * b]
            for k in range(self.steps_per_epoch)
        ]

    # -- setup helpers ----------------------------------------------------------------------
    def _head_from_probe(self) -> None:
        """Set the last layer to the linear probe on the training particles (head_init="probe")."""
        import torch

        from napari_cryossl.probe import embed, fit_logistic

        train = self.data.subset(self.train_rows)
        labels = np.asarray(train.class_numbers, dtype=np.int64)
        weight, bias = fit_logistic(
            embed(self.model.encoder, train, batch_size=self.local_batch * 4),
            np.searchsorted(self.classes, labels),
            len(self.classes),
        )
        linear = self.model.head[-1]
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        self.method += ", head from linear probe"

    def _resume_split(self, state: dict, labels: np.ndarray):
        from napari_cryossl.devices import InputError

        split = state.get("split") or {}
        train_rows = np.asarray(split.get("train_rows", []), dtype=np.int64)
        val_rows = np.asarray(split.get("val_rows", []), dtype=np.int64)
        classes = [int(c) for c in state.get("class_numbers") or []]
        rows = np.concatenate([train_rows, val_rows])
        if (
            len(train_rows) == 0
            or rows.max(initial=-1) >= len(labels)
            or not set(labels[rows].tolist()) <= set(classes)
            or (labels[rows] <= 0).any()
        ):
            raise InputError(
                f"{self.last_path}: the labelled particles have changed since this run was "
                "started; start a new run without --resume"
            )
        info = dict(split.get("info") or {})
        info["classes"] = classes
        return train_rows, val_rows, info

    def _restore(self, state: dict) -> None:
        from napari_cryossl.devices import InputError

        try:
            self.model.load_state_dict(state["model"])
            if state.get("optimizer") is None:
                raise KeyError("optimizer")
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(
                f"{self.last_path}: does not match this fine-tuning setup ({exc}); start a "
                "new run without --resume or use the same options"
            ) from exc
        # More (or fewer) epochs than the interrupted run: the schedule reads
        # ``total_steps``, which already stretches the cosine to the new end.
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        best = state.get("best") or {}
        self.best.update({k: best[k] for k in ("val_accuracy", "val_loss", "epoch") if k in best})
        self._wrote_out = self.out.is_file()
        self.restore_progress(state.get("progress"), self.last_path)
        _set_rng_state(state.get("rng"), self.device)

    # -- loop hooks ---------------------------------------------------------------------------
    def loader(self, batches):
        return _loader(self, batches, self.train_rows)

    def _targets(self, labels):
        import torch

        index = np.searchsorted(self.classes, labels.numpy())
        return torch.from_numpy(index).to(self.device, non_blocking=True)

    def train_step(self, boxes, labels) -> float:
        from napari_cryossl.devices import autocast, to_device

        x = to_device(boxes, self.device)
        y = self._targets(labels)
        self.trainable.train()
        if self.config.freeze_encoder:
            self.model.encoder.eval()
        if self.augment is not None:
            x = self.augment(x)
        with autocast(self.device, self.dtype):
            logits = self.trainable(x)
        loss = self.criterion(logits.float(), y)
        _backward_step(self, loss)
        self.scheduler.step()
        self._correct += int((logits.detach().argmax(1) == y).sum())
        self._seen += int(y.numel())
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"fine-tuning loss became {value} at step {self.global_step + 1}; lower the "
                "learning rate (--lr)"
            )
        return value

    def evaluate(self) -> dict:
        """Validation loss and accuracy of the current weights (no augmentation, eval mode)."""
        import torch

        from napari_cryossl.devices import autocast, to_device

        if len(self.val_rows) == 0:
            return {}
        self.model.eval()
        total_loss, correct = 0.0, 0
        batches = [self.val_rows[i : i + 64] for i in range(0, len(self.val_rows), 64)]
        with torch.inference_mode():
            for boxes, labels, _rows in _plain_loader(self, batches):
                x = to_device(boxes, self.device)
                y = self._targets(labels)
                with autocast(self.device, self.dtype):
                    logits = self.model(x)
                total_loss += float(
                    torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                )
                correct += int((logits.argmax(1) == y).sum())
        n = len(self.val_rows)
        return {"val_loss": total_loss / n, "val_accuracy": correct / n}

    def end_epoch(self, mean_loss: float) -> dict:
        train_acc = self.ctx.mean(self._correct / max(self._seen, 1), self.device)
        self._correct = self._seen = 0
        metrics: dict[str, Any] = {"train_loss": mean_loss, "train_accuracy": train_acc}
        val = self.evaluate()
        metrics.update(val)
        if val:
            better = val["val_accuracy"] > self.best["val_accuracy"] or (
                val["val_accuracy"] == self.best["val_accuracy"]
                and val["val_loss"] < self.best["val_loss"]
            )
            if better:
                self.best = {
                    "val_accuracy": val["val_accuracy"],
                    "val_loss": val["val_loss"],
                    "epoch": self.epoch,
                }
                self._write_out(metrics)
            metrics["best_val_accuracy"] = self.best["val_accuracy"]
            metrics["best_epoch"] = self.best["epoch"]
        else:
            # Without validation examples the latest weights are the best we know.
            self.best["epoch"] = self.epoch
            self._write_out(metrics)
        metrics["n_train"] = int(self.n_train)
        metrics["n_val"] = int(len(self.val_rows))
        if self.notes:
            metrics["note"] = "; ".join(self.notes)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------
    def _names(self) -> list[str]:
        names = {int(k): v for k, v in (self.config.class_names or {}).items()}
        return [str(names.get(int(c), f"class {int(c)}")) for c in self.classes]

    def _state(self, **extra):
        from napari_cryossl.models import checkpoint_state

        return checkpoint_state(
            self.model,
            voxel_size=self.data.voxel_size,
            class_numbers=[int(c) for c in self.classes],
            class_names=self._names(),
            method=self.method,
            config=_plain_config(self.config),
            init=str(self.init) if self.init is not None else None,
            **extra,
        )

    def _write_out(self, metrics: dict) -> None:
        """The classifier to predict with: the best validation weights so far."""
        from napari_cryossl.models import save_checkpoint

        if self.ctx.is_main:
            plain = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
            save_checkpoint(self.out, self._state(epoch=self.epoch, metrics=plain))
        self._wrote_out = True

    def save(self, *, reason: str) -> Path | None:
        from napari_cryossl.models import save_checkpoint

        if not self.ctx.is_main:
            return self.last_path
        state = self._state(
            epoch=self.epoch,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            grad_scaler=self.scaler.state_dict() if self.scaler is not None else None,
            progress=self.progress_state(),
            rng=_rng_state(self.device),
            best=dict(self.best),
            split={
                "train_rows": self.train_rows,
                "val_rows": self.val_rows,
                "info": {k: v for k, v in self.split_info.items() if k != "counts"},
            },
            stopped=reason != "epoch",
        )
        save_checkpoint(self.last_path, state)
        if not self._wrote_out:
            # Stopped before the first validation: leave a usable classifier at ``out``.
            save_checkpoint(self.out, self._state(epoch=self.epoch))
            self._wrote_out = True
        return self.last_path


def iter_finetune(
    data,
    config: FinetuneConfig,
    out,
    *,
    init=None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    distributed=None,
) -> Iterator[TrainStatus]:
    """Train a classifier on the labelled particles (class number > 0).

    Starts from a pretrained encoder (``init``) or from random weights. SGD with
    momentum and a cosine learning-rate decay minimise the cross-entropy. After every
    epoch the validation split is evaluated and the best model is written to ``out``.
    Class numbers may be sparse (e.g. 2, 5, 7): the checkpoint stores the sorted list
    and output i means class ``classes[i]``.

    Args:
        data: a ``SubtomogramSet``; unlabelled rows (0) are ignored.
        config: ``FinetuneConfig``.
        out: classifier checkpoint (the best validation model); the resumable state
            goes to ``last_checkpoint_path(out)``.
        init: encoder (or classifier) checkpoint to start from; its box size must match.
        resume: continue from ``last_checkpoint_path(out)`` if it exists.
        should_stop: polled before every step; True stops (on every rank).
        distributed: a ``distributed.DistributedContext``; None detects torchrun.

    Yields:
        ``TrainStatus`` after every step, every epoch and at the end.

    Raises:
        InputError: fewer than 2 labelled classes, bad settings, a checkpoint for
            another box size or preset.
        DeviceOutOfMemoryError: the GPU ran out of memory (checkpoint saved first).
    """
    job = _FinetuneJob(data, config, out, init=init, resume=resume, distributed=distributed)
    return _train_epochs(job, should_stop)


# --------------------------------------------------------------------------- shared helpers


def _backward_step(job, loss) -> None:
    """Backward pass and optimiser step, with float16 loss scaling when needed."""
    job.optimizer.zero_grad(set_to_none=True)
    if job.scaler is not None:
        job.scaler.scale(loss).backward()
        job.scaler.step(job.optimizer)
        job.scaler.update()
    else:
        loss.backward()
        job.optimizer.step()


def _loader(job: _Job, batches: list[np.ndarray], rows: np.ndarray):
    """Training batches: positions in ``rows`` -> boxes of those rows of ``job.data``."""
    from napari_cryossl.loader import batch_loader

    return batch_loader(
        job.data,
        [rows[b] for b in batches],
        num_workers=job.num_workers,
        pin_memory=job.device.type == "cuda",
        seed=job.seed + job.epoch,
    )


def _plain_loader(job: _Job, batches: list[np.ndarray]):
    from napari_cryossl.loader import batch_loader

    return batch_loader(job.data, batches, num_workers=0, pin_memory=job.device.type == "cuda")


def _plain_config(config) -> dict:
    """The config as plain values for the checkpoint (tuples -> lists, keys -> str)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        out[key] = value
    return out


def _source(data) -> str:
    """How to name a particle set in messages: its STAR file, else a description."""
    path = getattr(data, "source_path", None)
    return str(path) if path else f"particle set of {len(data)} subtomograms"
