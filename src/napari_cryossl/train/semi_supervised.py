"""Semi-supervised fine-tuning (FixMatch, Sohn et al. 2020) on the unlabelled particles.

``iter_finetune(config=FinetuneConfig(semi_supervised=True))`` adds, to every labelled
batch, ``unlabelled_ratio`` x as many unlabelled particles: the particles of the same set
with class number 0, and the labelled ones that ``label_fraction`` left out (their labels
are not used). Each unlabelled box is seen twice:

- a **weak view**, a random half-turn about z, y or x (or none): a lossless permutation of
  the voxels that keeps the missing wedge of a beam along z where it is (the only
  rotations that do, docs/training.md), with no interpolation. The network in eval mode
  (no dropout, BatchNorm's running statistics), without gradients, predicts it; where the
  largest softmax probability reaches ``pseudo_label_threshold`` its class becomes the
  box's **pseudo-label** (``pseudo_labels``);
- a **strong view**, the fine-tuning augmentation (uniform 3D rotation, shift, scale of
  the recipe) plus fresh noise (``STRONG_NOISE`` x the box's standard deviation), trained
  with the cross-entropy against the pseudo-label, weighted by ``unlabelled_weight`` and
  averaged over the whole unlabelled batch (boxes below the threshold count as 0, as in
  FixMatch).

The labelled and the strong unlabelled boxes go through the network in one batch, so
BatchNorm sees both. The unlabelled order of every epoch is a function of (seed, epoch)
only, like the labelled one, so a stopped run resumes with the same batches.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "STRONG_NOISE",
    "FixMatch",
    "pseudo_labels",
    "unlabelled_batches",
    "half_turns",
    "unlabelled_rows",
    "weak_view",
]

#: Fresh Gaussian noise added to the strong view, x each box's standard deviation.
STRONG_NOISE = 0.5


def unlabelled_rows(class_numbers, train_rows, val_rows) -> np.ndarray:
    """Rows a semi-supervised run learns from without labels: class number 0, and labelled
    rows in neither the training nor the validation split (left out by ``label_fraction``).

    Validation rows never take part, so the best-epoch choice stays on unseen particles.
    """
    labels = np.asarray(class_numbers, dtype=np.int64)
    used = np.zeros(len(labels), dtype=bool)
    used[np.asarray(train_rows, dtype=np.int64)] = True
    used[np.asarray(val_rows, dtype=np.int64)] = True
    return np.flatnonzero(~used).astype(np.int64)


def unlabelled_batches(
    n_rows: int, n_steps: int, global_batch: int, *, seed: int, epoch: int,
    rank: int = 0, world_size: int = 1,
) -> list[np.ndarray]:
    """This rank's unlabelled batches (positions in the unlabelled rows) for one epoch.

    The global batches cycle through random permutations of the rows (none repeated
    before all have been drawn); rank r takes its slice of each. A function of
    (seed, epoch) only.
    """
    if n_rows == 0 or global_batch <= 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_steps)]
    rng = np.random.default_rng([int(seed), int(epoch), 0xF1C5])
    n_draws = n_steps * global_batch
    cycles = math.ceil(n_draws / n_rows)
    order = np.concatenate([rng.permutation(n_rows) for _ in range(cycles)])[:n_draws]
    local = global_batch // world_size
    return [
        order[k * global_batch + rank * local : k * global_batch + (rank + 1) * local]
        for k in range(n_steps)
    ]


def half_turns(x):
    """The four wedge-keeping views of each box: itself and its half-turns about z, y, x."""
    import torch

    return [x, torch.flip(x, (3, 4)), torch.flip(x, (2, 4)), torch.flip(x, (2, 3))]


def weak_view(x, generator=None):
    """Each box turned by one of {identity, half-turn about z, y or x}, drawn uniformly.

    A half-turn about an axis reverses the two others: exact (no resampling), no mirror
    image (the hand of a structure is kept), and the missing wedge (beam z, tilt axis y)
    maps onto itself.
    """
    import torch

    n = x.shape[0]
    choice = torch.randint(0, 4, (n,), generator=generator).to(x.device)
    out = x
    for k, turned in enumerate(half_turns(x)[1:], start=1):
        pick = (choice == k).view(n, *([1] * (x.dim() - 1)))
        out = torch.where(pick, turned, out)
    return out


def pseudo_labels(logits, threshold: float):
    """FixMatch's pseudo-labels from the weak view's logits (no temperature).

    Returns:
        ``(targets (n,) int64, mask (n,) bool, confidence (n,) float)``: the class index
        of the largest softmax probability, whether it reaches ``threshold``, and that
        probability.
    """
    import torch

    probs = torch.softmax(logits.detach().float(), dim=1)
    confidence, targets = probs.max(dim=1)
    return targets, confidence >= float(threshold), confidence


class FixMatch:
    """The unlabelled half of a semi-supervised step and its running statistics.

    Args:
        threshold: pseudo-label confidence threshold (max softmax probability).
        weight: weight of the unlabelled loss (FixMatch's lambda_u).
        augment_options: ``SubtomogramAugment`` arguments of the labelled views; the
            strong view adds ``STRONG_NOISE`` to them.
    """

    def __init__(
        self, threshold: float, weight: float, augment_options: dict | None, views: int = 1
    ):
        from napari_cryossl.nn.augment import SubtomogramAugment

        if views not in (1, 4):
            raise ValueError(f"views must be 1 (one random half-turn) or 4 (all), got {views}")
        self.views = int(views)
        self.threshold = float(threshold)
        self.weight = float(weight)
        options = dict(augment_options or {})
        options["noise"] = max(float(options.get("noise", 0.0)), STRONG_NOISE)
        self.strong = SubtomogramAugment(**options)
        self.reset()

    def reset(self) -> None:
        self.n_seen = 0  # unlabelled boxes this epoch
        self.n_masked = 0  # of which pseudo-labelled
        self.n_known = 0  # pseudo-labelled boxes whose hidden label is known
        self.n_right = 0  # of which right

    def pseudo_label(self, model, x_u, hidden=None, classes=None):
        """Weak view -> (targets, mask) on the device; counts the rate (and the accuracy
        where ``hidden`` holds a known class number, > 0)."""
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            if self.views == 1:
                logits = model(weak_view(x_u))
            else:  # the mean probability of the four half-turns, as logits
                probs = torch.softmax(model(torch.cat(half_turns(x_u))).float(), dim=1)
                logits = probs.view(4, len(x_u), -1).mean(0).clamp_min(1e-12).log()
        model.train(was_training)
        targets, mask, _ = pseudo_labels(logits, self.threshold)
        self.n_seen += int(mask.numel())
        self.n_masked += int(mask.sum())
        if hidden is not None and classes is not None:
            hidden = np.asarray(hidden)
            known = hidden > 0
            m = mask.cpu().numpy() & known
            if m.any():
                truth = np.searchsorted(classes, hidden[m])
                self.n_known += int(m.sum())
                self.n_right += int((targets.cpu().numpy()[m] == truth).sum())
        return targets, mask

    def loss(self, logits_u, targets, mask):
        """The weighted cross-entropy of the strong view, averaged over every box."""
        import torch

        if logits_u.shape[0] == 0:
            return logits_u.float().sum() * 0.0
        per_box = torch.nn.functional.cross_entropy(
            logits_u.float(), targets, reduction="none"
        )
        return self.weight * (per_box * mask.float()).mean()

    def metrics(self) -> dict:
        """``pseudo_label_rate`` (and ``pseudo_label_accuracy`` where hidden labels are
        known) of the epoch so far."""
        out = {"pseudo_label_rate": self.n_masked / max(self.n_seen, 1)}
        if self.n_known:
            out["pseudo_label_accuracy"] = self.n_right / self.n_known
        return out
