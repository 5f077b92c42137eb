"""The labelled particles a fine-tuning run learns from: ``split_labelled``.

A stratified subset of each class's labels (``label_fraction``) and a stratified
train/validation split of it (``val_fraction``), a function of the labels and the seed
only, so that a resumed run (which stores the rows) and a new run agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["split_labelled"]



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
    from napari_cryossl.io.errors import InputError

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
