"""Self-supervised pretraining of an encoder: ``iter_pretrain``.

``_PretrainJob`` is the pretraining side of the shared loop (``loop._train_epochs``):
the SSL objective (``ssl.build_ssl``) and its optimiser, two augmented views per
particle made on the device, and checkpoints that carry the MoCo queue and key encoder
so that a stopped run resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from napari_cryossl.base.status import TrainStatus
from napari_cryossl.train.checkpoints import (
    _check_resumable,
    _plain_config,
    _rng_state,
    _set_rng_state,
    last_checkpoint_path,
)
from napari_cryossl.train.config import PRETRAIN_RECIPES, PretrainConfig, encoder_overrides
from napari_cryossl.train.loop import (
    _backward_step,
    _fit_centring,
    _Job,
    _loader,
    _source,
    _train_epochs,
)

__all__ = ["iter_pretrain"]

# --------------------------------------------------------------------------- pretraining


class _PretrainJob(_Job):
    stage = "pretrain"

    def __init__(self, data, config: PretrainConfig, out, *, resume: bool, distributed):
        import torch

        from napari_cryossl.io.errors import InputError
        from napari_cryossl.nn.augment import SubtomogramAugment
        from napari_cryossl.nn.checkpoints import load_checkpoint
        from napari_cryossl.nn.devices import (
            amp_dtype,
            make_grad_scaler,
            memory_format,
            select_device,
        )
        from napari_cryossl.nn.distributed import DistributedContext
        from napari_cryossl.nn.models import build_encoder
        from napari_cryossl.nn.ssl import build_ssl

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
        self.notes: list[str] = []
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
        encoder = build_encoder(
            config.preset, data.box_size, **encoder_overrides(config, config.preset)
        )
        if not (resume and last_checkpoint_path(self.out).is_file()):
            # before the objective copies the encoder (MoCo's key encoder, BYOL's target);
            # a resumed run's references come back with its state
            if note := _fit_centring(encoder, data, self.seed):
                self.notes.append(note)
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
        state_file = self.last_path
        if resume:
            _check_resumable(self.out, self.last_path)
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
        from napari_cryossl.io.errors import InputError

        model = {f"encoder.{k}": v for k, v in state["model"].items()}
        extra = state.get("ssl_state")
        where = getattr(self, "_state_file", self.out)
        if extra is None or state.get("optimizer") is None:
            raise InputError(
                f"{where}: holds no pretraining state to resume from (the run finished and "
                "its state was dropped; pass --keep-state to keep it); start a new run "
                "instead of resuming"
            )
        try:
            self.objective.load_state_dict({**model, **extra})
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(
                f"{where}: does not match this pretraining setup ({exc}); start a new "
                "run instead of resuming, or use the same options"
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
        from napari_cryossl.nn.devices import autocast, to_device

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
        from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint

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
        return self.last_path

    def finish(self) -> Path | None:
        """The run is complete: write the encoder a user keeps (weights only) to ``out``,
        then drop the resume state."""
        from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint

        if self.ctx.is_main:
            about = {
                "voxel_size": self.data.voxel_size,
                "method": self.method,
                "epoch": self.epoch,
                "config": _plain_config(self.config),
                "hyperparameters": dict(self.hp),
            }
            save_checkpoint(self.out, checkpoint_state(self.objective.encoder, **about))
        return super().finish()


def _ssl_keys(method: str) -> set[str]:
    from napari_cryossl.nn.ssl import SSL_DEFAULTS

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
    """Self-supervised pretraining (contrastive or not) of an encoder on every particle.

    Labels are ignored. Each step loads a batch (pinned CPU memory), copies it to the
    device, makes two augmented views there (``SubtomogramAugment``), and minimises the
    method's loss (``ssl.build_ssl``). The encoder checkpoint ``out`` is what
    ``iter_finetune(init=out)`` starts from.

    Args:
        data: a ``SubtomogramSet`` (every particle is used).
        config: ``PretrainConfig``.
        out: encoder checkpoint, written when the run finishes (never when it is stopped
            or fails, so an encoder already there is kept); the resumable state goes to
            ``last_checkpoint_path(out)`` every ``save_every`` epochs and when stopped.
        resume: continue from ``last_checkpoint_path(out)`` if it exists (else start
            afresh).
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
