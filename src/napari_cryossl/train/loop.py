"""The training loop shared by pretraining and fine-tuning, and how to drive it.

``_Job`` holds what differs between the two (``pretrain._PretrainJob``,
``finetune._FinetuneJob``); ``_train_epochs`` is the one loop, a generator of
``TrainStatus`` that can be stopped and that writes a checkpoint when stopped, on an
error and on running out of GPU memory (see the package docstring,
``napari_cryossl.train``). ``run`` drives such a generator with ``TrainingCallbacks``.
The backward step and the data loaders both jobs use are here too.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryossl.base.status import TrainStatus

__all__ = ["TrainingCallbacks", "run"]

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
    notes: list[str]  # shown with every epoch's metrics ("note")
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
        metrics = {"train_loss": mean_loss}
        if self.notes:
            metrics["note"] = "; ".join(self.notes)
        return metrics

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
        from napari_cryossl.io.errors import InputError

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



def _oom_message(job: _Job, path: Path | None) -> str:
    saved = f"the checkpoint of the last completed step is in {path}; " if path else ""
    return (
        f"{job.device}: out of GPU memory while {job.stage} training with "
        f"{job.local_batch} subtomograms per step per GPU; {saved}lower --batch-size "
        "(e.g. halve it) and add --resume to continue"
    )


def _train_epochs(job: _Job, should_stop: Callable[[], bool] | None) -> Iterator[TrainStatus]:
    """The loop shared by pretraining and fine-tuning (see the package docstring)."""
    from napari_cryossl.nn.devices import DeviceOutOfMemoryError, empty_cache, is_out_of_memory

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
    from napari_cryossl.particles.loader import batch_loader

    return batch_loader(
        job.data,
        [rows[b] for b in batches],
        num_workers=job.num_workers,
        pin_memory=job.device.type == "cuda",
        seed=job.seed + job.epoch,
    )


def _plain_loader(job: _Job, batches: list[np.ndarray]):
    from napari_cryossl.particles.loader import batch_loader

    return batch_loader(job.data, batches, num_workers=0, pin_memory=job.device.type == "cuda")



def _source(data) -> str:
    """How to name a particle set in messages: its STAR file, else a description."""
    path = getattr(data, "source_path", None)
    return str(path) if path else f"particle set of {len(data)} subtomograms"


#: Boxes the input stage's centring references are fitted on (a random sample of the
#: particles when there are more). The references are averages: fitted on 150, 300 or
#: 600 boxes of 32³ they centre equally well (docs/benchmarks.md, "What centring costs"),
#: and the fit's time grows with boxes x voxels. So at most 2,000 boxes, and as many
#: voxels as 500 boxes of 32³ (seconds on a CPU), but never fewer than 200 boxes.
CENTRING_SAMPLE = 2000
CENTRING_SAMPLE_VOXELS = 500 * 32**3


def centring_sample(n_particles: int, box_size: int, seed: int) -> np.ndarray:
    """Sorted rows of the particles the centring references are fitted on: all of them, or
    a random sample of ``CENTRING_SAMPLE`` / ``CENTRING_SAMPLE_VOXELS`` worth."""
    n = max(200, min(CENTRING_SAMPLE, CENTRING_SAMPLE_VOXELS // int(box_size) ** 3))
    rows = np.arange(int(n_particles))
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
    return rows


def _fit_centring(encoder, data, seed: int) -> str | None:
    """Fit the encoder's centring references (``models.Centring``) on the particles, once;
    return a note for the user when centring declined.

    A fresh encoder with centring has none yet; an encoder from a checkpoint keeps the
    references it was trained with, so prediction centres the same way.
    """
    from napari_cryossl.nn.centring import MIN_SEPARATION
    from napari_cryossl.nn.models import centring_of

    centring = centring_of(encoder)
    if centring is None or centring.is_fitted or len(data) == 0:
        return None
    centring.fit(data.load(centring_sample(len(data), int(data.box_size), seed)), seed=seed)
    if centring.is_active:
        return None
    return (f"particles not centred in their boxes: the spherical references find them "
            f"hardly better than in noise (separation {centring.separation:.2f} < "
            f"{MIN_SEPARATION:g}), so boxes are used as picked")
