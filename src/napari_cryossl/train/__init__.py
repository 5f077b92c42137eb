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

Checkpoints (``checkpoints.save_checkpoint``: atomic, ``torch.load(weights_only=True)``) carry
the preset, box size, voxel size, normalisation, method, epoch, and for classifiers the
sorted class numbers and names. ``out`` is what a user keeps and moves around: weights
only (pretraining: the last encoder; fine-tuning: the best-validation classifier), and it
is written once, when the run finishes: a stopped, interrupted or failed run never
replaces what is already there. The full training state (optimiser, schedule, MoCo key
encoder and queue, random state, the best weights so far) goes to
``<out stem>.last<suffix>`` during the run; ``resume`` reads it, and it loads as an
encoder or classifier itself. A stopped run keeps it; a finished one deletes it unless
``keep_state`` is set; see ``last_checkpoint_path``.

On CUDA the loops use autocast (bfloat16, or float16 with a gradient scaler), the
``channels_last_3d`` layout, pinned host memory with ``non_blocking`` copies, and run
the augmentation on the GPU. An out-of-memory error saves the checkpoint and raises
``devices.DeviceOutOfMemoryError`` telling the user to lower ``--batch-size`` (and to
``--resume``). Under ``torchrun`` the loops use DistributedDataParallel; see
``distributed.py`` and ``docs/training.md``.

One module per concern, from the bottom up:

- `config`: `PretrainConfig`, `FinetuneConfig`, the recipes (`RECIPES`,
  `PRETRAIN_RECIPES`, `GPU_EPOCHS`) and their checks;
- `labels`: `split_labelled`, the stratified label subset and validation split;
- `checkpoints`: `last_checkpoint_path`, the random state and the config as stored;
- `loop`: `_Job` and `_train_epochs` (the one loop), `run` and `TrainingCallbacks`, the
  backward step and the loaders;
- `pretrain`: `iter_pretrain` (`_PretrainJob`);
- `finetune`: `iter_finetune` (`_FinetuneJob`).

Every public name is importable from ``napari_cryossl.train`` itself, as before the
split. Importing this package imports neither torch nor Qt (numpy only).
"""

from __future__ import annotations

# The status type lives in status.py (predict.py yields it too); re-exported here.
from napari_cryossl.base.status import TrainStatus
from napari_cryossl.train.checkpoints import last_checkpoint_path, unused_checkpoint_path
from napari_cryossl.train.config import (
    FINETUNE_AUGMENT,
    FinetuneConfig,
    PretrainConfig,
)
from napari_cryossl.train.config import GPU_EPOCHS as GPU_EPOCHS
from napari_cryossl.train.config import HEAD_INITS as HEAD_INITS
from napari_cryossl.train.config import KEEP_STATE_HELP as KEEP_STATE_HELP
from napari_cryossl.train.config import PRETRAIN_RECIPES as PRETRAIN_RECIPES
from napari_cryossl.train.config import PRETRAIN_ROTATION_AUGMENT as PRETRAIN_ROTATION_AUGMENT
from napari_cryossl.train.config import RECIPES as RECIPES
from napari_cryossl.train.config import ROTATION_AUGMENT as ROTATION_AUGMENT
from napari_cryossl.train.finetune import iter_finetune
from napari_cryossl.train.labels import split_labelled
from napari_cryossl.train.loop import TrainingCallbacks, run
from napari_cryossl.train.pretrain import iter_pretrain

__all__ = [
    "FINETUNE_AUGMENT",
    "FinetuneConfig",
    "PretrainConfig",
    "TrainStatus",
    "TrainingCallbacks",
    "iter_finetune",
    "iter_pretrain",
    "last_checkpoint_path",
    "unused_checkpoint_path",
    "run",
    "split_labelled",
]
