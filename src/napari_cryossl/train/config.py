"""Training settings: ``PretrainConfig``, ``FinetuneConfig``, their recipes and checks.

Every option is declared once here (``options.option``: default, choices, bounds, help);
the CLI builds its arguments and the dock its choices, defaults and tooltips from these
dataclasses. ``RECIPES`` (fine-tuning) and ``PRETRAIN_RECIPES`` fill what a config
leaves at None; ``GPU_EPOCHS`` lengthens the default recipe on a GPU.

This module imports only the standard library and ``options`` (no numpy, no torch), so
the CLI and the dock can read the settings without loading the training code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from napari_cryossl.base.options import (
    CPU_FINETUNE_MIN_STEPS,
    MODEL_PRESETS,
    RECIPE_NAMES,
    SSL_METHODS,
    device_option,
    option,
    workers_option,
)

__all__ = [
    "FINETUNE_AUGMENT",
    "GPU_EPOCHS",
    "HEAD_INITS",
    "KEEP_STATE_HELP",
    "PRETRAIN_RECIPES",
    "PRETRAIN_ROTATION_AUGMENT",
    "RECIPES",
    "ROTATION_AUGMENT",
    "FinetuneConfig",
    "PretrainConfig",
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


def centre_particles_option():
    """The ``centre_particles`` option, the same for pretraining and fine-tuning."""
    return option(
        True,
        "centring: a new encoder moves each particle to its box centre (spherical references "
        "fitted on these particles, kept in the checkpoint), as picks are a few voxels "
        "off-centre; declines, with a note, where the references find particles no better "
        "than in noise; on by default",
        flag="--no-centre-particles",
        negate=True,
    )


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


@dataclass
class PretrainConfig:
    """Self-supervised pretraining settings.

    Attributes:
        recipe: "default" (3D-rotation views; MoCo at lr 1e-3, m 0.99) or "paper"
            (Gupta et al.'s views and settings); see ``PRETRAIN_RECIPES``.
        method: "moco", "simclr", "swav" (contrastive), "simsiam" or "byol"
            (non-contrastive: no negatives; docs/training.md).
        preset: encoder preset ("rb3d-small", the measured default; "rb3d", the paper's).
        epochs, batch_size, lr, weight_decay: None takes ``ssl.SSL_DEFAULTS[method]``
            (MoCo: 200 epochs, batch 16, Adam lr 1e-4, weight decay 1e-4). The batch is
            the global batch (split over torchrun processes).
        device: "auto", "cpu", "cuda" or "cuda:N".
        seed: seeds weights, data order and augmentation.
        num_workers: DataLoader worker processes.
        amp: mixed precision (``devices.amp_dtype``): on CUDA, and bfloat16 on CPUs that
            compute it natively.
        save_every: write the checkpoint every this many epochs (and always at the end
            and when stopped).
        augment: ``SubtomogramAugment`` arguments (None: the recipe's views).
        ssl_options: further ``build_ssl`` hyper-parameters (e.g. ``queue_size``).
        centre_particles: a new encoder centres each particle in its box first
            (``models.Centring``, ``encoder_overrides``; default on, docs/training.md).
        encoder_options: ``build_encoder`` overrides (e.g. ``batch_norm=True``).
        gather_distributed: with several processes, share negatives across them
            (MoCo: one queue filled with every rank's keys; SimCLR: negatives from
            every rank; SwAV: Sinkhorn over every rank's batch).
    """

    method: str = option(
        "moco",
        "self-supervised objective: moco, simclr, swav (contrastive); simsiam, byol "
        "(non-contrastive)",
        choices=SSL_METHODS,
    )
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
    device: str = device_option()
    seed: int = option(0, "seeds the weights, the data order and the augmentation")
    num_workers: int = workers_option()
    keep_state: bool = option(False, KEEP_STATE_HELP)
    amp: bool = True
    save_every: int = 1
    centre_particles: bool = centre_particles_option()
    augment: dict[str, Any] | None = None
    ssl_options: dict[str, Any] | None = None
    encoder_options: dict[str, Any] | None = None
    gather_distributed: bool = True

    def hyperparameters(self) -> dict[str, Any]:
        """``SSL_DEFAULTS[method]`` with this config's non-None values on top."""
        from napari_cryossl.io.errors import InputError
        from napari_cryossl.nn.ssl import SSL_DEFAULTS

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
            steps (default 1,500 with the recipe's epochs, 0 when ``epochs`` is given;
            paper 0).
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
        encoder_lr_factor: the encoder learns at ``lr`` times this (the last layers at
            ``lr``): below 1 a pretrained encoder keeps more of what it learned.
        augment: augment the training batches (``augment_options``).
        augment_options: ``SubtomogramAugment`` arguments (default ``ROTATION_AUGMENT``,
            paper ``FINETUNE_AUGMENT``).
        dropout: dropout before the last layer (default 0.3, paper 0.5).
        tta: test-time augmentation stored with the classifier: prediction averages
            the class probabilities over this many fixed rotations (1: none).
        semi_supervised: FixMatch (``train.semi_supervised``): each step adds
            ``unlabelled_ratio`` x the batch of unlabelled particles (class 0, and labels
            left out by ``label_fraction``); a wedge-keeping half-turn of each is
            predicted, and where the top probability reaches ``pseudo_label_threshold``
            a strongly augmented view is trained on that class with weight
            ``unlabelled_weight``. ``pseudo_label_views`` 4 averages the probabilities of
            all four half-turns instead of predicting one random half-turn.
        class_names: {class number: name} stored in the checkpoint.
        device, seed, num_workers, amp, save_every: as in ``PretrainConfig``.
        centre_particles: a random start centres each particle in its box first
            (``models.Centring``; default on, docs/training.md; an ``init`` encoder keeps
            what it was trained with).
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
        "epoch is a step or two (default: the recipe's, 1,500, when --epochs is not given; "
        "0 when it is, so that --epochs means what it says)",
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
    encoder_lr_factor: float = option(
        1.0,
        "the encoder learns at the learning rate times this, the classifier's last layers at "
        "the learning rate: below 1 a pretrained encoder keeps more of what it learned",
        minimum=0.0,
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
    semi_supervised: bool = option(
        False,
        "semi-supervised (FixMatch): also learn from the unlabelled particles (class 0, "
        "and labels left out by --label-fraction), trained on their confident predictions",
    )
    unlabelled_ratio: int = option(
        1,
        "semi-supervised: unlabelled particles per labelled one in each step (FixMatch: 7; "
        "each one costs about another labelled step)",
        minimum=1,
    )
    pseudo_label_threshold: float = option(
        0.7,
        "semi-supervised: an unlabelled particle is trained on its predicted class when "
        "that class's probability reaches this (FixMatch's 0.95 is out of reach with the "
        "recipe's label smoothing 0.1: it caps a confident prediction at 0.9 + 0.1 / classes)",
        minimum=0.0,
        maximum=1.0,
    )
    unlabelled_weight: float = option(
        1.0, "semi-supervised: weight of the unlabelled particles' loss", minimum=0.0
    )
    pseudo_label_views: int = 1
    class_names: dict[int, str] | None = None
    device: str = device_option()
    seed: int = option(0, "seeds the label split, the weights and the augmentation")
    num_workers: int = workers_option()
    keep_state: bool = option(False, KEEP_STATE_HELP)
    amp: bool = True
    save_every: int = 1
    centre_particles: bool = centre_particles_option()
    encoder_options: dict[str, Any] | None = None

    def resolved(self, device_type: str | None = None) -> FinetuneConfig:
        """A copy with every None taken from ``RECIPES[recipe]`` (checked); on a GPU
        (``device_type`` "cuda") the epochs from ``GPU_EPOCHS`` when not given, on a CPU
        ("cpu") at most ``CPU_FINETUNE_MIN_STEPS`` steps when neither epochs nor
        min_steps are given."""
        from napari_cryossl.io.errors import InputError

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
        if self.epochs is None and self.min_steps is None and device_type == "cpu":
            values["min_steps"] = min(int(values["min_steps"]), CPU_FINETUNE_MIN_STEPS)
        if self.epochs is not None and self.min_steps is None:
            # Epochs a user chose mean what they say: the recipe's minimum number of steps
            # stretches only the recipe's own epochs.
            values["min_steps"] = 0
        out = dataclasses.replace(self, **values)
        out.check()
        return out

    def check(self) -> None:
        """Raise ``InputError`` for values no run can use (on a resolved config)."""
        from napari_cryossl.io.errors import InputError

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
        if int(self.unlabelled_ratio) != self.unlabelled_ratio or self.unlabelled_ratio < 1:
            raise InputError(
                f"unlabelled ratio must be an integer >= 1, got {self.unlabelled_ratio}"
            )
        if not 0.0 <= self.pseudo_label_threshold <= 1.0:
            raise InputError(
                f"pseudo-label threshold must be in [0, 1], got {self.pseudo_label_threshold}"
            )
        if not (math.isfinite(self.encoder_lr_factor) and self.encoder_lr_factor >= 0):
            raise InputError(
                f"encoder learning-rate factor must be >= 0, got {self.encoder_lr_factor}"
            )
        if not (math.isfinite(self.unlabelled_weight) and self.unlabelled_weight >= 0):
            raise InputError(
                f"unlabelled weight must be >= 0, got {self.unlabelled_weight}"
            )
        for key in ("min_steps", "tta"):
            v = getattr(self, key)
            if v is not None and (int(v) != v or v < (1 if key == "tta" else 0)):
                raise InputError(f"{key.replace('_', ' ')} must be an integer >= "
                                 f"{1 if key == 'tta' else 0}, got {v}")


#: Spherical references of ``centre_particles`` (``models.Centring``): about the number of
#: kinds of particle in a set; more cost a little time and no accuracy.
CENTRING_REFERENCES = 10


def encoder_overrides(config: PretrainConfig | FinetuneConfig, preset: str) -> dict[str, Any]:
    """The ``build_encoder`` overrides of a config for ``preset``: ``encoder_options``, plus
    centring when ``centre_particles`` and the preset has an input stage to centre in (the
    global-pooling layout; the paper's ``rb3d`` has none)."""
    from napari_cryossl.nn.models import PRESETS

    out = dict(config.encoder_options or {})
    if config.centre_particles and preset in PRESETS and PRESETS[preset].pooling == "global":
        out.setdefault("centring", CENTRING_REFERENCES)
    return out


def _check_positive(values: dict, ints: tuple[str, ...], floats: tuple[str, ...]) -> None:
    from napari_cryossl.io.errors import InputError

    for key in ints:
        v = values[key]
        if int(v) != v or int(v) < 1:
            raise InputError(f"{key.replace('_', ' ')} must be a positive integer, got {v}")
    for key in floats:
        v = float(values[key])
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{key.replace('_', ' ')} must be positive, got {values[key]}")
