"""Floor and ceiling for every accuracy figure: a trivial classifier and template matching.

A CNN's accuracy means little alone: 40 % on 10 classes is a broken pipeline on an easy
task or a good one on a hard task. Every table in this project therefore prints two
numbers measured on the same particles:

- **the floor**: a multinomial logistic regression on rotation-invariant features
  (``radial_features``: mean and mean-square density in spherical shells around the box
  centre, and the shell-averaged power spectrum), fitted on exactly the labelled
  particles the CNN gets. A classifier below it has not learnt shape;
- **the ceiling** (simulated data only): template matching with the simulator's true
  class templates, filtered by the same CTF, missing wedge and band limit as the data,
  searched over a near-uniform set of 3D rotations (super-Fibonacci spirals) and over
  shifts; each particle goes to the class of its best normalised cross-correlation.
  It knows the answer's shapes, so it is what a classifier could reach at best with
  this noise and crowding (not a strict bound: the search is finite).

Both work on plain ``(N, B, B, B)`` float arrays (ZYX), so the benchmarks, the demo and
the tests call them the same way. Hand-written because no library does template
matching of subtomograms against filtered templates with a bounded shift search in
batch; the regression reuses ``probe.fit_logistic``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FloorClassifier",
    "TemplateMatchResult",
    "floor_accuracy",
    "radial_features",
    "simulated_ceiling",
    "super_fibonacci_rotations",
    "template_match",
]


# --------------------------------------------------------------------------- the floor


def _shell_index(box: int, n_shells: int | None) -> tuple[np.ndarray, int]:
    """Integer shell of every voxel by its distance from the box centre (index B//2)."""
    c = box // 2
    g = np.arange(box) - c
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    n = int(n_shells) if n_shells else int(math.ceil(box / 2)) + 1
    idx = np.minimum((r * (n - 1) / (box / 2)).round().astype(np.int64), n - 1)
    return idx.ravel(), n


def _shell_means(values: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """(N, V) values -> (N, n) mean over each shell (matrix product with shell indicators)."""
    onehot = np.zeros((values.shape[1], n), dtype=np.float64)
    onehot[np.arange(values.shape[1]), idx] = 1.0
    counts = np.maximum(onehot.sum(0), 1.0)
    return (values.astype(np.float64) @ onehot) / counts


def radial_features(volumes: np.ndarray, n_shells: int | None = None) -> np.ndarray:
    """Rotation-invariant features of each box: radial density profiles and power spectrum.

    Per box: the mean and the mean square of the (standardised) density in each
    spherical shell about the box centre, and the mean power |F|² in each shell of
    spatial frequency. All three are unchanged by rotating the particle about the box
    centre (up to voxel interpolation); they ignore how density is arranged within a
    shell, which is what shape classifiers must learn.

    Args:
        volumes: (N, B, B, B) float boxes (ZYX), particle near the box centre.
        n_shells: shells per profile (default: B/2 + 1, one voxel wide).

    Returns:
        float64 (N, 3 * n_shells) features.
    """
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim != 4 or len(set(v.shape[1:])) != 1:
        raise ValueError(f"radial_features: expected (N, B, B, B) boxes, got {v.shape}")
    n, b = v.shape[0], v.shape[1]
    flat = v.reshape(n, -1).astype(np.float64)
    flat = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-8)
    idx, k = _shell_index(b, n_shells)
    mean = _shell_means(flat, idx, k)
    meansq = _shell_means(flat**2, idx, k)
    power = np.abs(np.fft.fftshift(np.fft.fftn(flat.reshape(n, b, b, b), axes=(1, 2, 3)),
                                   axes=(1, 2, 3))) ** 2
    spectrum = np.log1p(_shell_means(power.reshape(n, -1), idx, k))
    return np.concatenate([mean, meansq, spectrum], axis=1)


@dataclass
class FloorClassifier:
    """Logistic regression on ``radial_features``: the floor a CNN must clear.

    ``fit`` on the labelled boxes, ``predict`` class numbers of others. The features
    are standardised inside ``probe.fit_logistic``; ``l2`` is its penalty.
    """

    l2: float = 1e-2
    n_shells: int | None = None
    classes_: np.ndarray | None = None
    weight_: np.ndarray | None = None
    bias_: np.ndarray | None = None

    def fit(self, volumes: np.ndarray, class_numbers: np.ndarray) -> FloorClassifier:
        from napari_cryossl.nn.probe import fit_logistic

        labels = np.asarray(class_numbers, dtype=np.int64)
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            raise ValueError("floor classifier: the labelled boxes hold fewer than two classes")
        feats = radial_features(volumes, self.n_shells)
        self.weight_, self.bias_ = fit_logistic(
            feats, np.searchsorted(self.classes_, labels), len(self.classes_), l2=self.l2
        )
        return self

    def predict_proba(self, volumes: np.ndarray) -> np.ndarray:
        if self.weight_ is None:
            raise RuntimeError("floor classifier: call fit() first")
        logits = radial_features(volumes, self.n_shells) @ self.weight_.T.astype(np.float64)
        logits = logits + self.bias_
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def predict(self, volumes: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(volumes).argmax(1)]


def floor_accuracy(train_volumes, train_labels, test_volumes, test_labels, **kw) -> float:
    """Accuracy of ``FloorClassifier`` fitted on the training boxes, on the test boxes."""
    clf = FloorClassifier(**kw).fit(train_volumes, train_labels)
    return float((clf.predict(test_volumes) == np.asarray(test_labels)).mean())


# --------------------------------------------------------------------------- the ceiling


def super_fibonacci_rotations(n: int) -> np.ndarray:
    """``n`` near-uniform rotations of SO(3), (n, 3, 3) float64 (see ``augment``)."""
    from napari_cryossl.nn.augment import super_fibonacci_rotations as rotations

    return rotations(n).numpy()


@dataclass
class TemplateMatchResult:
    """Best class per box, and the best normalised cross-correlation of every class."""

    class_numbers: np.ndarray  # (N,) 1-based: index into the templates + 1
    scores: np.ndarray  # (N, C)


def _rotate(volumes, rotations):
    """Each of (C, B, B, B) volumes turned by each of (R, 3, 3) zyx rotations about its
    centre (``augment.rotate_3d``); (C * R, B, B, B) torch tensors."""
    import torch

    from napari_cryossl.nn.augment import rotate_3d

    vol = torch.as_tensor(volumes, dtype=torch.float32)
    # rotate_3d(x, R) samples x at R^T u; passing R^T samples at R u.
    inverse = torch.as_tensor(rotations, dtype=torch.float32).transpose(1, 2)
    b = vol.shape[-1]
    return torch.cat(
        [rotate_3d(v.expand(len(inverse), 1, b, b, b), inverse)[:, 0] for v in vol]
    )


def template_match(
    volumes: np.ndarray,
    templates: np.ndarray,
    *,
    transfer: np.ndarray | None = None,
    n_rotations: int = 500,
    max_shift: int = 3,
    chunk: int = 64,
) -> TemplateMatchResult:
    """Classify boxes by their best normalised cross-correlation with rotated templates.

    Args:
        volumes: (N, B, B, B) boxes (ZYX).
        templates: (C, B, B, B) density of each class, centred at B//2, in the data's
            contrast or its negative (only the sign of ``transfer`` times the template
            matters; a negative correlation never wins).
        transfer: optional rfftn-layout (B, B, B//2+1) filter applied to each rotated
            template (the data's CTF × missing wedge × band limit, in the fixed frame).
        n_rotations: rotations searched (super-Fibonacci); the angular step is about
            (8π² / n)^(1/3): 500 gives ~33°, 2,000 ~21°.
        max_shift: shifts of up to this many voxels along each axis are searched.
        chunk: rotated templates correlated at once (memory: N × chunk × B³ floats).

    Returns:
        ``TemplateMatchResult``.
    """
    import torch

    x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"template_match: expected (N, B, B, B) boxes, got {tuple(x.shape)}")
    n, b = x.shape[0], x.shape[-1]
    x = x - x.mean((1, 2, 3), keepdim=True)
    x = x / (x.flatten(1).norm(dim=1).view(n, 1, 1, 1) + 1e-12)
    fx = torch.fft.rfftn(x, dim=(1, 2, 3))
    c = len(templates)
    rotated = _rotate(templates, super_fibonacci_rotations(int(n_rotations)))  # (C*R, B, B, B)
    ft = torch.fft.rfftn(rotated, dim=(1, 2, 3))
    if transfer is not None:
        ft = ft * torch.as_tensor(np.asarray(transfer, dtype=np.float32))
    # Zero-mean, unit-norm templates (Parseval: the norm from the spectrum).
    ft[:, 0, 0, 0] = 0
    t_real = torch.fft.irfftn(ft, s=(b, b, b), dim=(1, 2, 3))
    ft = ft / (t_real.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    shifts = np.r_[0 : max_shift + 1, b - max_shift : b] if max_shift > 0 else np.array([0])
    window = torch.as_tensor(np.unique(shifts % b))
    best = torch.full((n, len(ft)), -math.inf)
    with torch.inference_mode():
        for start in range(0, len(ft), chunk):
            part = ft[start : start + chunk]
            cc = torch.fft.irfftn(fx[:, None] * part.conj()[None], s=(b, b, b), dim=(2, 3, 4))
            cc = cc[:, :, window][:, :, :, window][:, :, :, :, window]
            best[:, start : start + len(part)] = cc.flatten(2).amax(2)
    scores = best.view(n, c, -1).amax(2).numpy()
    return TemplateMatchResult(class_numbers=scores.argmax(1) + 1, scores=scores)


def simulated_ceiling(volumes, config, *, n_rotations: int = 500, max_shift=None, chunk=64):
    """Template matching with the simulator's true templates for data simulated with ``config``.

    The templates are ``simulate.class_templates(config)`` filtered by the data's own
    -(CTF × missing wedge × band limit); the shift search covers ``config.max_shift_px``
    (rounded up) unless ``max_shift`` is given.

    Returns:
        ``TemplateMatchResult`` (class numbers 1..n_classes).
    """
    from napari_cryossl.simulate import class_templates
    from napari_cryossl.simulate.optics import _transfer

    b = int(config.box_size)
    if np.asarray(volumes).shape[-1] != b:
        raise ValueError(
            f"simulated_ceiling: boxes of {np.asarray(volumes).shape[-1]} voxels, simulation "
            f"config of {b}"
        )
    shift = int(math.ceil(config.max_shift_px)) if max_shift is None else int(max_shift)
    return template_match(
        volumes,
        class_templates(config),
        transfer=_transfer((b, b, b), config),
        n_rotations=n_rotations,
        max_shift=shift,
        chunk=chunk,
    )
