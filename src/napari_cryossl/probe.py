"""Linear-probe evaluation of an encoder: how much class information its embeddings hold.

The standard yardstick of self-supervised learning: freeze the encoder, embed labelled
particles, fit an L2-regularised multinomial logistic regression on the standardised
embeddings and score it on held-out particles. It measures the representation alone (no
fine-tuning of the encoder), so it shows whether pretraining taught the encoder anything
about the classes, which fine-tuning results mix with what the labels teach.

scikit-learn would do the regression but is not otherwise needed, so the ~20 lines of
full-batch L-BFGS are written here with torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ProbeResult:
    """Accuracy of a linear probe, and its predictions on the held-out set."""

    accuracy: float
    predicted: np.ndarray  # RELION class numbers, one per held-out particle
    classes: np.ndarray


def embed(encoder, data, batch_size: int = 64) -> np.ndarray:
    """(N, F) float32 embeddings of every subtomogram of `data`, on the CPU, in eval mode."""
    import torch

    encoder = encoder.eval()
    b = int(encoder.box_size)
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            x = torch.from_numpy(np.asarray(data.load(idx), dtype=np.float32))
            out.append(encoder(x.reshape(len(idx), 1, b, b, b)).numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)


def linear_probe(encoder, train, test, *, l2: float = 1e-2, max_iter: int = 200) -> ProbeResult:
    """Fit a linear classifier on frozen embeddings of `train`, score it on `test`.

    Args:
        encoder: an ``RB3DEncoder`` (e.g. ``models.encoder_from_checkpoint``).
        train, test: ``SubtomogramSet`` with class numbers (every row labelled).
        l2: weight of the squared-weight penalty (the embeddings are standardised).
        max_iter: L-BFGS iterations.

    Returns:
        ``ProbeResult`` with the held-out accuracy.

    Raises:
        ValueError: unlabelled rows, or fewer than two classes in `train`.
    """
    import torch

    for name, data in (("train", train), ("test", test)):
        if data.class_numbers is None or np.any(np.asarray(data.class_numbers) <= 0):
            raise ValueError(f"linear probe: every {name} particle needs a class number")
    classes = np.unique(train.class_numbers)
    if len(classes) < 2:
        raise ValueError("linear probe: the training particles hold fewer than two classes")
    a = torch.from_numpy(embed(encoder, train)).double()
    b = torch.from_numpy(embed(encoder, test)).double()
    mean, std = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mean) / std, (b - mean) / std
    y = torch.from_numpy(np.searchsorted(classes, train.class_numbers))
    weights = torch.zeros(a.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=int(max_iter))

    def closure():
        optimiser.zero_grad()
        logits = a @ weights + bias
        loss = torch.nn.functional.cross_entropy(logits, y) + l2 * weights.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predicted = classes[(b @ weights + bias).argmax(1).numpy()]
    accuracy = float((predicted == np.asarray(test.class_numbers)).mean()) if len(test) else 0.0
    return ProbeResult(accuracy=accuracy, predicted=predicted, classes=classes)
