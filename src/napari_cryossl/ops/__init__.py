"""Operations: one function per user action, under every front end.

Each operation is a generator: it yields one `status.Progress` after every step, can be
stopped by closing it (between steps), resolves its defaults from its inputs (the box
size, voxel size and classes of a checkpoint), writes its results itself and refuses to
replace an existing output unless ``overwrite`` (so the rule holds for every command
and every dock section alike), and *returns* its result (``StopIteration.value``; use
``run`` to drain one, ``console.run_operation`` to show it in a terminal, or a napari
generator worker's ``returned`` signal in the dock). The CLI, the dock and `cryossl demo`
call these; none of them chains core steps itself.

- `particles`: where particles come from (`load_particles`) and the box they are cut at;
- `outputs`: what the operations write (STAR / RELION 5 / CSV / Dynamo / copick);
- `predict`, `gradcam`, `embed` (and `suggest`), `pick`, `picker` (train_picker), `train`
  (pretrain, finetune),
  `simulate`: the actions.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["run"]


def run(operation: Generator[Any, None, Any], on_progress=None) -> Any:
    """Drive an operation to its end; call ``on_progress`` with each `Progress`; return
    its result."""
    while True:
        try:
            item = next(operation)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)


def results_of(generator) -> Generator[Any, None, Any]:
    """The progress of a core generator that yields progress then its result: yield the
    progress, return the last other item."""
    from napari_cryossl.base.status import Progress

    result = None
    for item in generator:
        if isinstance(item, Progress):
            yield item
        else:
            result = item
    return result
