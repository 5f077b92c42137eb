"""Supervised fine-tuning of a classifier on the labelled particles: ``iter_finetune``.

``_FinetuneJob`` is the fine-tuning side of the shared loop (``loop._train_epochs``):
the label split (``labels.split_labelled``), class-balanced batches, the warm-up and
cosine schedule, validation after every epoch with the best weights kept, and the
resumable state (split, optimiser, schedule, best weights) in ``last_checkpoint_path(out)``.
With ``semi_supervised`` every step adds a batch of unlabelled particles trained on their
confident pseudo-labels (``semi_supervised.FixMatch``).
``out`` itself is written once, when the run finishes: a stopped or failed run never
replaces the classifier a user already has there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryossl.base.status import TrainStatus
from napari_cryossl.train.checkpoints import (
    _check_resumable,
    _plain_config,
    _rng_state,
    _set_rng_state,
    last_checkpoint_path,
)
from napari_cryossl.train.config import FinetuneConfig, encoder_overrides
from napari_cryossl.train.labels import split_labelled
from napari_cryossl.train.loop import (
    _backward_step,
    _fit_centring,
    _Job,
    _loader,
    _plain_loader,
    _source,
    _train_epochs,
)

__all__ = ["iter_finetune"]

# --------------------------------------------------------------------------- fine-tuning


class _FinetuneJob(_Job):
    stage = "finetune"

    def __init__(self, data, config: FinetuneConfig, out, *, init, resume: bool, distributed):
        import torch

        from napari_cryossl.io.errors import InputError
        from napari_cryossl.nn.augment import SubtomogramAugment
        from napari_cryossl.nn.checkpoints import encoder_from_checkpoint, load_checkpoint
        from napari_cryossl.nn.devices import (
            amp_dtype,
            fused_adam,
            make_grad_scaler,
            memory_format,
            select_device,
        )
        from napari_cryossl.nn.distributed import DistributedContext
        from napari_cryossl.nn.models import Classifier, build_encoder

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
        if resume:
            _check_resumable(self.out, self.last_path)
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
            encoder = build_encoder(preset, data.box_size, **encoder_overrides(config, preset))
            self.method = "supervised"
        if config.centre_particles and self.init is not None and _could_centre(encoder):
            self.notes.append(
                f"{self.init} was trained without centring; it keeps seeing the particles as "
                "they are boxed (centre them when pretraining)"
            )
        if config.freeze_encoder and "(linear probe)" not in self.method:
            self.method += " (linear probe)"
        self.preset = preset
        if note := _fit_centring(encoder, data, self.seed):
            self.notes.append(note)
        self.model = Classifier(encoder, len(self.classes), dropout=config.dropout)
        if config.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        self.model.to(self.device, memory_format=memory_format(self.device))
        if resume_state is None and config.head_init == "probe":
            self._head_from_probe()
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = self._param_groups(float(config.lr))
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused_adam(params)
            )
        else:
            self.optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.total_steps = max(self.n_epochs * self.steps_per_epoch, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dtype = amp_dtype(self.device, config.amp)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.augment = (
            SubtomogramAugment(**dict(config.augment_options)) if config.augment else None
        )
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(config.label_smoothing))
        self.semi = None  # semi_supervised.FixMatch when semi-supervised
        self.unlabelled = np.zeros(0, dtype=np.int64)
        if config.semi_supervised:
            self._setup_semi_supervised()
        self.trainable = self.ctx.wrap(self.model, self.device) if self.ctx.enabled else self.model
        self.best = {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": 0}
        # Temperature scaling of the best classifier (train/calibration.py); None: not fitted.
        self.temperature: float | None = None
        self.calibration: dict | None = None
        self._val_outputs = None
        self._best_state: dict | None = None  # the best validation classifier so far
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
    def _setup_semi_supervised(self) -> None:
        """FixMatch on the rows without a label in this run (train/semi_supervised.py)."""
        from napari_cryossl.train.semi_supervised import FixMatch, unlabelled_rows

        config = self.config
        self.unlabelled = unlabelled_rows(self.data.class_numbers, self.train_rows, self.val_rows)
        if len(self.unlabelled) == 0:
            self.notes.append(
                "semi-supervised: no unlabelled particles (class 0) in the set; trained on "
                "the labels only"
            )
            return
        self.semi = FixMatch(
            config.pseudo_label_threshold,
            config.unlabelled_weight,
            config.augment_options if config.augment else None,
            views=int(config.pseudo_label_views),
        )
        self.method += ", semi-supervised (FixMatch)"

    def _param_groups(self, lr: float) -> list[dict]:
        """The encoder at ``lr * encoder_lr_factor``, the head at ``lr`` (one group when equal)."""
        factor = float(self.config.encoder_lr_factor)
        encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
        mine = {id(p) for p in encoder}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in mine]
        if factor == 1.0 or not encoder:
            return [{"params": encoder + head}]
        return [{"params": head}, {"params": encoder, "lr": lr * factor}]

    def _head_from_probe(self) -> None:
        """Set the last layer to the linear probe on the training particles (head_init="probe")."""
        import torch

        from napari_cryossl.nn.probe import embed, fit_logistic

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
        from napari_cryossl.io.errors import InputError

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
                "started; start a new run instead of resuming"
            )
        info = dict(split.get("info") or {})
        info["classes"] = classes
        return train_rows, val_rows, info

    def _restore(self, state: dict) -> None:
        from napari_cryossl.io.errors import InputError

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
                "new run instead of resuming, or use the same options"
            ) from exc
        # More (or fewer) epochs than the interrupted run: the schedule reads
        # ``total_steps``, which already stretches the cosine to the new end.
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        best = state.get("best") or {}
        self.best.update({k: best[k] for k in ("val_accuracy", "val_loss", "epoch") if k in best})
        self.temperature = state.get("temperature")
        self.calibration = state.get("calibration")
        self._best_state = state.get("best_model")
        self.restore_progress(state.get("progress"), self.last_path)
        _set_rng_state(state.get("rng"), self.device)

    # -- loop hooks ---------------------------------------------------------------------------
    def loader(self, batches):
        if self.semi is None:
            return _loader(self, batches, self.train_rows)
        return self._semi_loader(batches)

    def _semi_loader(self, batches):
        """Each labelled batch followed by its unlabelled batch, loaded together; the
        unlabelled rows' class numbers come back as ``-1 - hidden`` (hidden: the class
        number in the file, 0 or a label left out), so ``train_step`` can tell them apart."""
        from napari_cryossl.particles.loader import batch_loader
        from napari_cryossl.train.semi_supervised import unlabelled_batches

        first = self.step_in_epoch  # the loop hands over the epoch's batches from here on
        global_u = int(self.config.unlabelled_ratio) * self.local_batch * self.ctx.world_size
        u_batches = unlabelled_batches(
            len(self.unlabelled),
            self.steps_per_epoch,
            global_u,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )[first : first + len(batches)]
        rows = [
            np.concatenate([self.train_rows[b], self.unlabelled[u]])
            for b, u in zip(batches, u_batches, strict=True)
        ]
        sizes = [len(b) for b in batches]
        loader = batch_loader(
            self.data,
            rows,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            seed=self.seed + self.epoch,
        )
        return _marked(sizes, loader)


    def _targets(self, labels):
        import torch

        index = np.searchsorted(self.classes, labels.numpy())
        return torch.from_numpy(index).to(self.device, non_blocking=True)

    def train_step(self, boxes, labels) -> float:
        import torch

        from napari_cryossl.nn.devices import autocast, to_device

        x = to_device(boxes, self.device)
        n_l = int((labels >= 0).sum()) if self.semi is not None else len(labels)
        y = self._targets(labels[:n_l])
        x_u = x[n_l:]
        x = x[:n_l]
        targets_u = mask_u = None
        if len(x_u):
            hidden = (-1 - labels[n_l:]).numpy()
            with autocast(self.device, self.dtype):
                targets_u, mask_u = self.semi.pseudo_label(
                    self.model, x_u, hidden=hidden, classes=self.classes
                )
            x_u = self.semi.strong(x_u)
        self.trainable.train()
        if self.config.freeze_encoder:
            self.model.encoder.eval()
        if self.augment is not None:
            x = self.augment(x)
        if len(x_u):
            x = torch.cat([x, x_u])
        with autocast(self.device, self.dtype):
            logits = self.trainable(x)
        loss = self.criterion(logits[:n_l].float(), y)
        if len(x_u):
            loss = loss + self.semi.loss(logits[n_l:], targets_u, mask_u)
        logits = logits[:n_l]
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

        from napari_cryossl.nn.devices import autocast, to_device

        if len(self.val_rows) == 0:
            return {}
        self.model.eval()
        total_loss, correct = 0.0, 0
        outputs = []  # (logits, targets) for temperature scaling
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
                outputs.append((logits.float().cpu().numpy(), y.cpu().numpy()))
        self._val_outputs = tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))
        n = len(self.val_rows)
        return {"val_loss": total_loss / n, "val_accuracy": correct / n}

    def end_epoch(self, mean_loss: float) -> dict:
        train_acc = self.ctx.mean(self._correct / max(self._seen, 1), self.device)
        self._correct = self._seen = 0
        metrics: dict[str, Any] = {**super().end_epoch(mean_loss), "train_accuracy": train_acc}
        if self.semi is not None:
            semi = self.semi.metrics()
            metrics["pseudo_label_rate"] = self.ctx.mean(semi["pseudo_label_rate"], self.device)
            if "pseudo_label_accuracy" in semi:  # this rank's: not every rank may know one
                metrics["pseudo_label_accuracy"] = semi["pseudo_label_accuracy"]
            self.semi.reset()
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
                self._calibrate()  # before the best classifier's state is taken
                metrics.update(self._calibration_metrics())
                self._keep_best(metrics)
            metrics.update(self._calibration_metrics())
            metrics["best_val_accuracy"] = self.best["val_accuracy"]
            metrics["best_epoch"] = self.best["epoch"]
        else:
            # Without validation examples the latest weights are the best we know.
            self.best["epoch"] = self.epoch
            self._keep_best(metrics)
        metrics["n_train"] = int(self.n_train)
        metrics["n_val"] = int(len(self.val_rows))
        return metrics

    # -- calibration --------------------------------------------------------------------------
    def _calibrate(self) -> None:
        """Temperature scaling on the validation logits of the model just found best."""
        from napari_cryossl.train.calibration import calibration_report

        logits, targets = self._val_outputs
        self.calibration = dict(calibration_report(logits, targets), epoch=int(self.epoch))
        self.temperature = float(self.calibration["temperature"])

    def _calibration_metrics(self) -> dict:
        """The best classifier's temperature and validation ECE, for the epoch's metrics."""
        c = self.calibration or {}
        names = {
            "temperature": "temperature",
            "ece_before": "val_ece",
            "ece_after": "val_ece_calibrated",
        }
        metrics = {name: float(c[k]) for k, name in names.items() if k in c}
        if c.get("note"):
            metrics["calibration_note"] = str(c["note"])
        return metrics

    # -- checkpoints ------------------------------------------------------------------------
    def _names(self) -> list[str]:
        names = {int(k): v for k, v in (self.config.class_names or {}).items()}
        return [str(names.get(int(c), f"class {int(c)}")) for c in self.classes]

    def _state(self, **extra):
        from napari_cryossl.nn.checkpoints import checkpoint_state

        return checkpoint_state(
            self.model,
            voxel_size=self.data.voxel_size,
            class_numbers=[int(c) for c in self.classes],
            class_names=self._names(),
            method=self.method,
            config=_plain_config(self.config),
            init=str(self.init) if self.init is not None else None,
            temperature=self.temperature,
            calibration=self.calibration,
            **extra,
        )

    def _keep_best(self, metrics: dict) -> None:
        """Remember the best validation classifier so far (a copy on the CPU); it goes to
        ``out`` when the run finishes and into the resume state when it stops."""
        plain = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
        state = self._state(epoch=self.epoch, metrics=plain)
        state["model"] = {k: v.detach().to("cpu", copy=True) for k, v in state["model"].items()}
        self._best_state = state

    def save(self, *, reason: str) -> Path | None:
        from napari_cryossl.nn.checkpoints import save_checkpoint

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
            best_model=self._best_state,
            split={
                "train_rows": self.train_rows,
                "val_rows": self.val_rows,
                "info": {k: v for k, v in self.split_info.items() if k != "counts"},
            },
            stopped=reason != "epoch",
        )
        save_checkpoint(self.last_path, state)
        return self.last_path

    def finish(self) -> Path | None:
        """The run is complete: write the best validation classifier (the latest weights
        when nothing was validated) to ``out``, then drop the resume state."""
        from napari_cryossl.nn.checkpoints import save_checkpoint

        if self.ctx.is_main:
            state = self._best_state or self._state(epoch=self.epoch)
            save_checkpoint(self.out, state)
        return super().finish()


def _could_centre(encoder) -> bool:
    """An encoder with an input stage (global layout) that does not centre."""
    from napari_cryossl.nn.models import InputStage

    stage = getattr(encoder, "input", None)
    return isinstance(stage, InputStage) and stage.centring is None


def _marked(sizes, loader):
    """The semi-supervised batches with the unlabelled part's class numbers marked."""
    for n_l, (boxes, labels, rows) in zip(sizes, loader, strict=True):
        labels = labels.clone()
        labels[n_l:] = -1 - labels[n_l:]
        yield boxes, labels, rows


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
        data: a ``SubtomogramSet``; unlabelled rows (0) are ignored, unless
            ``config.semi_supervised`` (then they, and labels left out by
            ``label_fraction``, are learnt from with pseudo-labels: ``semi_supervised``).
        config: ``FinetuneConfig``.
        out: classifier checkpoint (the best validation model), written when the run
            finishes; until then, and when stopped, the state (which loads as a
            classifier too) is in ``last_checkpoint_path(out)``.
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
