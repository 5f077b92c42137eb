"""Batches of subtomograms for training and prediction: a torch ``DataLoader``.

``batch_loader(data, batches)`` turns a ``dataset.SubtomogramSet`` and the row indices
of each batch into an iterable of ``(boxes (n, 1, B, B, B), class_numbers (n,), rows
(n,))`` CPU tensors, in the given order. Each item is one whole batch read by a single
``SubtomogramSet.load`` call, so a worker process (``num_workers`` > 0) loads whole
batches from a memory-mapped tomogram or from subtomogram files.

torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["batch_loader"]


class _BatchDataset:
    """Map-style dataset whose item k is the whole batch ``batches[k]``.

    One ``SubtomogramSet.load`` call per batch (fast for every kind of set), and with
    ``DataLoader(batch_size=None)`` each worker process loads whole batches.
    Items are ``(boxes (n, 1, B, B, B) float32, class_numbers (n,) int64, rows (n,))``.
    """

    def __init__(self, data, batches: Sequence[np.ndarray]):
        self.data = data
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        self.labels = np.asarray(data.class_numbers, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        import torch

        idx = self.batches[k]
        boxes = np.ascontiguousarray(self.data.load(idx), dtype=np.float32)
        return (
            torch.from_numpy(boxes).unsqueeze(1),
            torch.from_numpy(self.labels[idx]),
            torch.from_numpy(idx),
        )


def batch_loader(
    data,
    batches: Sequence[np.ndarray],
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
):
    """A ``DataLoader`` that yields the given batches of ``data`` in order.

    Args:
        data: a ``SubtomogramSet`` (anything with ``load(indices)`` and ``class_numbers``).
        batches: row indices of each batch.
        num_workers: loader processes; 0 loads in this process (best for sets in RAM).
        pin_memory: page-locked host batches for asynchronous copies to a GPU.
        seed: seed of the loader's own generator (it never touches torch's global RNG,
            which the augmentation and dropout use; resumed runs stay reproducible).

    Returns:
        An iterable of ``(boxes (n, 1, B, B, B), class_numbers (n,), rows (n,))`` CPU tensors.
    """
    import torch
    from torch.utils.data import DataLoader

    num_workers = max(int(num_workers), 0)
    return DataLoader(
        _BatchDataset(data, batches),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(int(seed)),
        prefetch_factor=2 if num_workers > 0 else None,
    )
