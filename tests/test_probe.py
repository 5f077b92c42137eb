"""Linear probe: separates what the embeddings separate, refuses what it cannot score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryossl.nn.models import build_encoder
from napari_cryossl.nn.probe import embed, linear_probe
from napari_cryossl.particles.dataset import SubtomogramSet

BOX = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bright_or_dark_centre(n, seed):
    """Class 1: a bright centre, class 3: a dark one, on noise; any encoder keeps that apart."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.array([1, 3]), n)
    volumes = rng.normal(size=(n, BOX, BOX, BOX)).astype(np.float32)
    volumes[:, 2:6, 2:6, 2:6] += np.where(labels == 1, 3.0, -3.0)[:, None, None, None]
    return SubtomogramSet.from_arrays(volumes, labels, voxel_size=10.0)


def test_probe_separates_separable_classes_and_reports_class_numbers():
    torch.manual_seed(0)
    encoder = build_encoder("rb3d-small", BOX, width=8, fc_dim=32)
    result = linear_probe(encoder, bright_or_dark_centre(24, 0), bright_or_dark_centre(40, 1))
    assert result.accuracy >= 0.95
    assert set(result.predicted) <= {1, 3} and list(result.classes) == [1, 3]


def test_probe_on_labels_unrelated_to_the_data_is_near_chance():
    torch.manual_seed(0)
    encoder = build_encoder("rb3d-small", BOX, width=8, fc_dim=32)
    train, test = bright_or_dark_centre(24, 0), bright_or_dark_centre(200, 1)
    shuffled = SubtomogramSet.from_arrays(
        np.stack([test.load(i)[0] for i in range(len(test))]),
        np.random.default_rng(5).permutation(test.class_numbers),
        voxel_size=10.0,
    )
    assert linear_probe(encoder, train, shuffled).accuracy < 0.65


def test_embed_matches_the_encoder_in_eval_mode():
    torch.manual_seed(0)
    encoder = build_encoder("rb3d-small", BOX, width=8, fc_dim=32)
    data = bright_or_dark_centre(5, 0)
    with torch.no_grad():
        direct = encoder.eval()(torch.from_numpy(data.load(np.arange(5)))[:, None]).numpy()
    np.testing.assert_allclose(embed(encoder, data, batch_size=2), direct, rtol=1e-5, atol=1e-6)


def test_probe_refuses_unlabelled_rows_and_a_single_class():
    encoder = build_encoder("rb3d-small", BOX, width=8, fc_dim=32)
    data = bright_or_dark_centre(6, 0)
    unlabelled = SubtomogramSet.from_arrays(
        np.stack([data.load(i)[0] for i in range(6)]), None, voxel_size=10.0
    )
    with pytest.raises(ValueError, match="train particle needs a class number"):
        linear_probe(encoder, unlabelled, data)
    one_class = SubtomogramSet.from_arrays(
        np.stack([data.load(i)[0] for i in range(6)]), np.ones(6, dtype=int), voxel_size=10.0
    )
    with pytest.raises(ValueError, match="fewer than two classes"):
        linear_probe(encoder, one_class, data)
