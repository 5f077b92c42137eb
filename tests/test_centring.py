"""Centring boxed particles without labels (particles/centring.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl.particles.centring import centre_offsets, shift_boxes


def _ball_boxes(rng, n, box=24, radii=(3.0, 6.0), max_shift=3, noise=0.3):
    """Dark balls of two sizes, each off-centre by a known whole-voxel offset (within the
    default search sphere of 4 voxels)."""
    g = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    offsets = rng.integers(-max_shift, max_shift + 1, size=(4 * n, 3))
    offsets = offsets[np.linalg.norm(offsets, axis=1) <= 4.0][:n]
    boxes = np.empty((n, box, box, box), dtype=np.float32)
    for i, (t, rad) in enumerate(zip(offsets, np.resize(radii, n), strict=True)):
        d = np.sqrt((zz - t[0]) ** 2 + (yy - t[1]) ** 2 + (xx - t[2]) ** 2)
        boxes[i] = -1.0 / (1.0 + np.exp(d - rad)) + noise * rng.standard_normal(d.shape)
    return boxes, offsets


def test_centre_offsets_finds_where_particles_of_different_sizes_sit():
    rng = np.random.default_rng(0)
    boxes, truth = _ball_boxes(rng, 40)
    found = centre_offsets(boxes, n_references=2)
    assert found.shape == (40, 3)
    error = np.abs(found - truth).max(axis=1)
    assert np.mean(error == 0) >= 0.9, error
    # and the boxes it centres look alike: their mean is the two balls' average, centred
    centred = shift_boxes(boxes, -found)
    g = np.arange(boxes.shape[1]) - boxes.shape[1] // 2
    mass = -centred.mean(0)
    mass = np.clip(mass, 0, None)
    com = [float((mass.sum(axis=tuple(a for a in range(3) if a != ax)) * g).sum() / mass.sum())
           for ax in range(3)]
    assert np.allclose(com, 0.0, atol=0.3), com


def test_centring_simulated_complexes_brings_them_closer_to_the_box_centre():
    from napari_cryossl.simulate import SimulationConfig
    from napari_cryossl.simulate.subtomograms import simulate_subtomogram_details

    config = SimulationConfig(n_classes=3, box_size=32, voxel_size=10.0, snr=1.0,
                              max_shift_px=3.0, structures="builtin")
    sim = simulate_subtomogram_details(20, config, seed=1)
    found = centre_offsets(sim.volumes, n_references=3)
    before = np.linalg.norm(sim.shifts_zyx, axis=1)
    after = np.linalg.norm(found - sim.shifts_zyx, axis=1)
    assert np.median(after) < 0.6 * np.median(before), (np.median(after), np.median(before))


def test_shift_boxes_moves_content_by_whole_voxels_like_a_roll_and_back():
    rng = np.random.default_rng(2)
    boxes = rng.standard_normal((3, 16, 16, 16)).astype(np.float32)
    shifts = np.array([[1, 0, -2], [0, 3, 0], [-1, -1, 1]])
    moved = shift_boxes(boxes, shifts)
    for box, s, out in zip(boxes, shifts, moved, strict=True):
        np.testing.assert_allclose(out, np.roll(box, tuple(s), axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(shift_boxes(moved, -shifts), boxes, atol=1e-4)


def test_bright_particles_need_bright_polarity():
    rng = np.random.default_rng(3)
    boxes, truth = _ball_boxes(rng, 20)
    found = centre_offsets(-boxes, n_references=2, polarity="bright")
    assert np.mean(np.abs(found - truth).max(axis=1) == 0) >= 0.9


@pytest.mark.parametrize(
    ("boxes", "kw", "message"),
    [
        (np.zeros((16, 16, 16)), {}, r"expected \(N, B, B, B\) boxes, got shape \(16, 16, 16\)"),
        (np.zeros((2, 16, 16, 12)), {}, "expected"),
        (np.zeros((2, 16, 16, 16)), {"polarity": "white"}, "polarity must be 'dark' or 'bright'"),
    ],
)
def test_bad_boxes_are_refused_by_name(boxes, kw, message):
    with pytest.raises(ValueError, match=message):
        centre_offsets(boxes, **kw)


def test_no_boxes_no_offsets():
    assert centre_offsets(np.zeros((0, 16, 16, 16))).shape == (0, 3)
