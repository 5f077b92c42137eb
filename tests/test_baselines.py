"""Floor and ceiling: the two numbers every accuracy figure is printed beside."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryossl.analysis.baselines import (
    FloorClassifier,
    floor_accuracy,
    radial_features,
    simulated_ceiling,
    super_fibonacci_rotations,
    template_match,
)
from napari_cryossl.simulate import SimulationConfig, class_templates, simulate_subtomograms

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def isolated(n_classes=4, snr=None, **kw):
    """Isolated particles in random orientations with CTF and missing wedge (no neighbours)."""
    base = dict(
        n_classes=n_classes,
        box_size=16,
        voxel_size=20.0,
        snr=snr,
        n_neighbors=0,
        max_shift_px=1.0,
        particle_diameter_a=240.0,
    )
    base.update(kw)
    return SimulationConfig(**base)


def test_radial_features_do_not_change_when_the_particle_turns():
    templates = class_templates(isolated())
    vol = templates[1]
    # Swapping z and x (a half turn about the z = x diagonal after a mirror) keeps the
    # voxel grid and the centre voxel B//2 where they are.
    turned = vol.transpose(2, 1, 0)
    a, b = radial_features(np.stack([vol, turned]))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    other = radial_features(templates[2:3])[0]
    assert np.abs(a - other).max() > 1e-3  # but they do differ between classes


def test_super_fibonacci_rotations_are_proper_and_spread_over_so3():
    r = super_fibonacci_rotations(300)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    # every random rotation has a sampled one within ~40° (random draws leave larger holes)
    probe = Rotation.random(200, random_state=0)
    sampled = Rotation.from_matrix(r)
    worst = max(np.degrees((sampled * p.inv()).magnitude()).min() for p in probe)
    assert worst < 40


def test_ceiling_finds_the_class_of_noisy_isolated_particles():
    cfg = isolated(snr=0.5)
    volumes, labels = simulate_subtomograms(10, cfg, seed=1)
    result = simulated_ceiling(volumes, cfg, n_rotations=300)
    assert result.scores.shape == (40, 4)
    assert (result.class_numbers == labels).mean() >= 0.9


def test_ceiling_is_near_perfect_on_noise_free_isolated_particles():
    cfg = isolated(snr=None)
    volumes, labels = simulate_subtomograms(8, cfg, seed=2)
    result = simulated_ceiling(volumes, cfg, n_rotations=300)
    assert (result.class_numbers == labels).mean() >= 0.9


def test_template_match_without_the_filter_still_prefers_the_right_template():
    templates = class_templates(isolated())
    # each box is a template itself, shifted by one voxel: its own template must win
    boxes = np.roll(templates, 1, axis=3)
    result = template_match(boxes, templates, n_rotations=50, max_shift=2)
    assert result.class_numbers.tolist() == [1, 2, 3, 4]


def test_floor_is_above_chance_and_fits_exactly_the_labels_it_is_given():
    cfg = isolated(snr=1.0)
    volumes, labels = simulate_subtomograms(40, cfg, seed=3)
    train, test = np.arange(80), np.arange(80, 160)
    acc = floor_accuracy(volumes[train], labels[train], volumes[test], labels[test])
    assert acc >= 0.25 + 0.2  # chance is 0.25
    clf = FloorClassifier().fit(volumes[train], labels[train])
    assert set(clf.predict(volumes[test])) <= set(labels[train])
    with pytest.raises(ValueError, match="fewer than two classes"):
        FloorClassifier().fit(volumes[:5], np.ones(5, dtype=int))
