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
    """(N, F) float32 embeddings of every subtomogram of `data`, in eval mode (on a fused
    copy of the encoder: the one given keeps its mode).

    Runs on the device the encoder's weights are on; returns a CPU array.
    """
    import torch

    from napari_cryossl.nn.devices import memory_format, to_device
    from napari_cryossl.nn.models import for_inference

    device = next(encoder.parameters()).device
    encoder = for_inference(encoder).to(memory_format=memory_format(device))
    b = int(encoder.box_size)
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            x = torch.from_numpy(np.asarray(data.load(idx), dtype=np.float32))
            x = to_device(x.reshape(len(idx), 1, b, b, b), device)
            out.append(encoder(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)


def fit_logistic(
    embeddings: np.ndarray,
    targets: np.ndarray,
    n_classes: int,
    *,
    l2: float = 1e-2,
    max_iter: int = 200,
):
    """Multinomial logistic regression on standardised embeddings, full-batch L-BFGS.

    Args:
        embeddings: (N, F) features.
        targets: (N,) class indices in [0, n_classes).

    Returns:
        (weight (n_classes, F), bias (n_classes,)) float32 arrays acting on the *raw*
        embeddings (the standardisation is folded in), i.e. the parameters of an
        ``nn.Linear(F, n_classes)``: a fine-tuning head can start from them.
    """
    import torch

    a = torch.from_numpy(np.asarray(embeddings)).double()
    mean, std = a.mean(0), a.std(0) + 1e-6
    a = (a - mean) / std
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    weights = torch.zeros(a.shape[1], int(n_classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(int(n_classes), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=int(max_iter))

    def closure():
        optimiser.zero_grad()
        logits = a @ weights + bias
        loss = torch.nn.functional.cross_entropy(logits, y) + l2 * weights.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        # ((x - mean) / std) @ W + b  ==  x @ (W / std) + (b - (mean / std) @ W)
        raw_w = weights / std[:, None]
        raw_b = bias - (mean / std) @ weights
    return raw_w.T.float().numpy(), raw_b.float().numpy()


def linear_probe(encoder, train, test, *, l2: float = 1e-2, max_iter: int = 200) -> ProbeResult:
    """Fit a linear classifier on frozen embeddings of `train`, score it on `test`.

    Args:
        encoder: an ``RB3DEncoder`` (e.g. ``checkpoints.encoder_from_checkpoint``).
        train, test: ``SubtomogramSet`` with class numbers (every row labelled).
        l2: weight of the squared-weight penalty (the embeddings are standardised).
        max_iter: L-BFGS iterations.

    Returns:
        ``ProbeResult`` with the held-out accuracy.

    Raises:
        ValueError: unlabelled rows, or fewer than two classes in `train`.
    """
    for name, data in (("train", train), ("test", test)):
        if data.class_numbers is None or np.any(np.asarray(data.class_numbers) <= 0):
            raise ValueError(f"linear probe: every {name} particle needs a class number")
    classes = np.unique(train.class_numbers)
    if len(classes) < 2:
        raise ValueError("linear probe: the training particles hold fewer than two classes")
    weight, bias = fit_logistic(
        embed(encoder, train),
        np.searchsorted(classes, train.class_numbers),
        len(classes),
        l2=l2,
        max_iter=max_iter,
    )
    logits = embed(encoder, test).astype(np.float64) @ weight.T.astype(np.float64) + bias
    predicted = classes[logits.argmax(1)] if len(test) else np.zeros(0, np.int64)
    accuracy = float((predicted == np.asarray(test.class_numbers)).mean()) if len(test) else 0.0
    return ProbeResult(accuracy=accuracy, predicted=predicted, classes=classes)
