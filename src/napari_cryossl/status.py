"""Progress of long work: the status that training and prediction generators yield.

``train.iter_pretrain``, ``train.iter_finetune`` and ``predict.iter_predict`` are
generators; each yields a ``TrainStatus`` after every step (batch), which the CLI shows
under a tqdm bar, the napari widgets show in a progress bar (inside a thread worker),
and tests read directly. Stopping is closing the generator.

This module imports only the standard library (no numpy, torch or Qt), so any front end
can use the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainStatus"]


@dataclass
class TrainStatus:
    """Progress of a training (or prediction) run, yielded after every step.

    Attributes:
        stage: "pretrain", "finetune" or "predict".
        epoch: epochs completed so far (0 during the first epoch; ``n_epochs`` at the end).
        n_epochs: epochs of the run.
        step: optimiser steps (prediction: batches) done in the whole run.
        n_steps: optimiser steps (batches) of the whole run.
        loss: this step's loss; for ``event="epoch"`` the epoch's mean loss.
        metrics: step: ``lr``; epoch: ``train_loss`` and, when fine-tuning,
            ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``best_val_accuracy``,
            ``best_epoch``, ``n_train``, ``n_val`` and a ``note`` when a class had too
            few labels for a validation split. Prediction: ``particles`` done and the
            ``batch_size`` in use.
        elapsed_s: seconds since this call started (a resumed run restarts the clock).
        done: True on the last status of a finished run.
        checkpoint: the file written at this point (epoch end, stop, done), else None.
        event: "step", "epoch", "done" or "stopped".
    """

    stage: str
    epoch: int
    n_epochs: int
    step: int
    n_steps: int
    loss: float | None
    metrics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    done: bool = False
    checkpoint: Path | None = None
    event: str = "step"

    @property
    def fraction(self) -> float:
        """Fraction of the run done, 0..1 (``step / n_steps``)."""
        if self.done:
            return 1.0
        return min(self.step / self.n_steps, 1.0) if self.n_steps > 0 else 0.0
