"""Subtomogram extraction: placement, rounding, padding, binning, normalisation, streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_cryossl.io import InputError
from napari_cryossl.particles.extract import (
    extract_subtomograms,
    iter_subtomogram_batches,
    normalise_subtomograms,
)

SHAPE = (20, 24, 28)


@pytest.fixture
def ramp() -> np.ndarray:
    """Every voxel holds a distinct value, so any misplaced voxel shows."""
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


def reference_box(volume: np.ndarray, center, length: int, fill: float) -> np.ndarray:
    """Direct computation: a box of edge `length` at nearest-voxel `center`, `fill` outside."""
    out = np.full((length,) * 3, fill, dtype=np.float64)
    c = np.floor(np.asarray(center, dtype=float) + 0.5).astype(int)
    for i in range(length):
        for j in range(length):
            for k in range(length):
                z, y, x = c - length // 2 + np.array([i, j, k])
                if (
                    0 <= z < volume.shape[0]
                    and 0 <= y < volume.shape[1]
                    and 0 <= x < volume.shape[2]
                ):
                    out[i, j, k] = volume[z, y, x]
    return out


@pytest.mark.parametrize("box", [5, 6])
def test_centre_voxel_sits_at_half_box(box):
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[9, 11, 13] = 1.0
    boxes, inside = extract_subtomograms(volume, [[9, 11, 13]], box, normalise=False)
    assert inside.all()
    assert boxes[0, box // 2, box // 2, box // 2] == 1.0
    assert boxes.sum() == 1.0


def test_interior_boxes_equal_direct_slicing_in_caller_order(ramp):
    centers = np.array([[18, 13, 20], [5, 6, 7], [10, 12, 14], [5, 22, 7]], dtype=float)
    boxes, inside = extract_subtomograms(ramp, centers, 6, normalise=False)
    assert boxes.dtype == np.float32 and boxes.shape == (4, 6, 6, 6)
    for i, c in enumerate(centers):
        z, y, x = c.astype(int) - 3
        if inside[i]:
            np.testing.assert_array_equal(boxes[i], ramp[z : z + 6, y : y + 6, x : x + 6])
    assert inside.tolist() == [False, True, True, False]


def test_fractional_centres_round_to_nearest_voxel_halves_up(ramp):
    a, _ = extract_subtomograms(ramp, [[10.5, 12.49, 13.51]], 4, normalise=False)
    b, _ = extract_subtomograms(ramp, [[11, 12, 14]], 4, normalise=False)
    np.testing.assert_array_equal(a, b)


def test_pad_fills_outside_with_in_bounds_mean(ramp):
    center = [1, 22, 2]
    boxes, inside = extract_subtomograms(ramp, [center], 8, normalise=False)
    assert not inside[0]
    in_bounds = ramp[0:5, 18:24, 0:6]
    expected = reference_box(ramp, center, 8, fill=float(in_bounds.mean()))
    np.testing.assert_allclose(boxes[0], expected, rtol=1e-6)


def test_pad_is_zero_after_normalisation(ramp):
    boxes, _ = extract_subtomograms(ramp, [[1, 22, 2]], 8)
    assert abs(boxes[0].mean()) < 1e-5 and abs(boxes[0].std() - 1) < 1e-5
    # The part outside the tomogram (z < 0 and y >= 24 and x < 0) carries no structure.
    assert np.abs(boxes[0, :3]).max() < 1e-5
    assert np.abs(boxes[0, :, 6:]).max() < 1e-5


def test_skip_and_error_modes(ramp):
    centers = [[10, 12, 14], [1, 12, 14], [100, 100, 100]]
    padded, inside_pad = extract_subtomograms(ramp, centers, 6, edge="pad")
    skipped, inside_skip = extract_subtomograms(ramp, centers, 6, edge="skip")
    assert inside_pad.tolist() == inside_skip.tolist() == [True, False, False]
    np.testing.assert_array_equal(skipped[0], padded[0])
    assert not skipped[1].any() and not skipped[2].any()
    assert padded[1].std() > 0.5  # padded, not skipped
    assert not padded[2].any()  # wholly outside: nothing to pad from
    with pytest.raises(InputError, match="particle 1"):
        extract_subtomograms(ramp, centers, 6, edge="error")


@pytest.mark.parametrize("binning", [2, 3])
def test_binning_average_pools_the_unbinned_box(ramp, binning):
    center = [10, 12, 13]
    boxes, inside = extract_subtomograms(ramp, [center], 2, binning=binning, normalise=False)
    length = 2 * binning
    full = reference_box(ramp, center, length, fill=np.nan)
    expected = full.reshape(2, binning, 2, binning, 2, binning).mean(axis=(1, 3, 5))
    assert inside[0]
    np.testing.assert_allclose(boxes[0], expected, rtol=1e-6)


def test_normalise_zero_mean_unit_std_and_constant_boxes(ramp):
    volume = ramp.copy()
    volume[:8, :8, :8] = 7.0
    boxes, _ = extract_subtomograms(volume, [[3, 3, 3], [10, 12, 14]], 6)
    assert not boxes[0].any()  # constant region: zeros, not NaN
    assert abs(boxes[1].mean()) < 1e-6 and abs(boxes[1].std() - 1) < 1e-5


def test_memmap_gives_the_same_boxes(ramp, tmp_path):
    path = tmp_path / "tomo.raw"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=SHAPE)
    mm[:] = ramp
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=SHAPE)
    centers = np.random.default_rng(0).uniform(0, 20, size=(30, 3))
    a, ia = extract_subtomograms(ramp, centers, 5, binning=2)
    b, ib = extract_subtomograms(ro, centers, 5, binning=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia, ib)


class _RecordingVolume:
    """An array-like that records which regions are read (the memmap's reads are invisible)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.ndim, self.dtype = data.shape, data.ndim, data.dtype
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, index):
        self.reads.append(index)
        return self._data[index]


def test_reads_only_each_box_in_z_order(ramp):
    vol = _RecordingVolume(ramp)
    centers = [[15, 12, 14], [4, 12, 14], [10, 12, 14], [4, 5, 14]]
    extract_subtomograms(vol, centers, 4)
    assert len(vol.reads) == 4
    for index in vol.reads:
        assert all(s.stop - s.start <= 4 for s in index)
    starts = [(index[0].start, index[1].start) for index in vol.reads]
    assert starts == sorted(starts)  # z then y order: near-sequential on disk


def test_non_finite_box_names_tomogram_and_particle(ramp, tmp_path):
    volume = ramp.copy()
    volume[10, 12, 14] = np.nan
    mm = np.memmap(tmp_path / "bad.raw", dtype=np.float32, mode="w+", shape=SHAPE)
    mm[:] = volume
    with pytest.raises(InputError, match=r"bad\.raw.*particle 2"):
        extract_subtomograms(mm, [[3, 3, 3], [16, 3, 3], [10, 12, 14]], 4)
    # A NaN outside every box does not matter.
    boxes, _ = extract_subtomograms(volume, [[3, 3, 3]], 4)
    assert np.isfinite(boxes).all()


def test_tomogram_object_is_named_in_errors(ramp, tmp_path):
    from napari_cryossl.io import Tomogram

    volume = ramp.copy()
    volume[5, 5, 5] = np.inf
    tomo = Tomogram(path=tmp_path / "cell7.mrc", data=volume, voxel_size=10.0)
    with pytest.raises(InputError, match=r"cell7\.mrc.*particle 1"):
        extract_subtomograms(tomo, [[15, 15, 15], [5, 5, 5]], 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box_size": 0}, "box_size"),
        ({"box_size": 2.5}, "box_size"),
        ({"binning": 0}, "binning"),
        ({"edge": "wrap"}, "edge"),
        ({"centers_zyx": [[1.0, 2.0]]}, "ZYX"),
        ({"centers_zyx": [[1.0, np.nan, 2.0]]}, "particle 0"),
    ],
)
def test_bad_arguments(ramp, kwargs, match):
    args = {"centers_zyx": [[5, 5, 5]], "box_size": 4} | kwargs
    with pytest.raises(InputError, match=match):
        extract_subtomograms(ramp, **args)


def test_not_a_3d_volume():
    with pytest.raises(InputError, match="3D"):
        extract_subtomograms(np.zeros((4, 4)), [[1, 1, 1]], 2)


def test_empty_centre_list(ramp):
    boxes, inside = extract_subtomograms(ramp, np.zeros((0, 3)), 4)
    assert boxes.shape == (0, 4, 4, 4) and inside.shape == (0,)


@pytest.mark.parametrize("order", ["z", "input"])
def test_batches_stream_the_same_boxes(ramp, order):
    centers = np.random.default_rng(1).uniform(-2, 22, size=(23, 3))
    whole, inside = extract_subtomograms(ramp, centers, 4, binning=2, edge="skip")
    seen = np.zeros(len(centers), dtype=int)
    sizes = []
    for indices, boxes, ins in iter_subtomogram_batches(
        ramp, centers, 4, 5, order=order, binning=2, edge="skip"
    ):
        sizes.append(len(indices))
        seen[indices] += 1
        np.testing.assert_array_equal(boxes, whole[indices])
        np.testing.assert_array_equal(ins, inside[indices])
    assert sizes == [5, 5, 5, 5, 3]
    assert (seen == 1).all()
    first = next(iter_subtomogram_batches(ramp, centers, 4, 5, order=order))[0]
    if order == "input":
        assert first.tolist() == [0, 1, 2, 3, 4]
    else:
        z = np.floor(centers[:, 0] + 0.5)
        assert z[first].max() <= np.sort(z)[4]


def test_batches_reject_bad_options(ramp):
    with pytest.raises(InputError, match="batch_size"):
        next(iter_subtomogram_batches(ramp, [[5, 5, 5]], 4, 0))
    with pytest.raises(TypeError, match="unexpected"):
        next(iter_subtomogram_batches(ramp, [[5, 5, 5]], 4, 2, normalize=True))


def test_normalise_subtomograms_matches_reference():
    rng = np.random.default_rng(2)
    boxes = rng.normal(5.0, 3.0, size=(3, 4, 4, 4)).astype(np.float32)
    boxes[1] = 2.0
    out = normalise_subtomograms(boxes)
    assert out.dtype == np.float32 and out is not boxes
    for i in (0, 2):
        ref = (boxes[i] - boxes[i].mean(dtype=np.float64)) / boxes[i].std(dtype=np.float64)
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-6)
    assert not out[1].any()
    assert boxes[1].max() == 2.0  # input untouched
    # A large offset (16-bit data) does not swamp the contrast.
    offset = boxes[0] + 30000.0
    np.testing.assert_allclose(normalise_subtomograms(offset), out[:1][0], atol=2e-3)
    with pytest.raises(InputError, match="non-finite"):
        normalise_subtomograms(np.full((1, 2, 2, 2), np.nan))


@settings(max_examples=40, deadline=None)
@given(
    center=st.tuples(*(st.floats(-4, 26, allow_nan=False) for _ in range(3))),
    box=st.integers(1, 7),
)
def test_pad_mode_matches_reference_everywhere(center, box):
    volume = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    boxes, inside = extract_subtomograms(volume, [center], box, normalise=False)
    ref = reference_box(volume, center, box, fill=np.nan)
    known = np.isfinite(ref)
    assert inside[0] == known.all()
    if known.any():
        np.testing.assert_array_equal(boxes[0][known], ref[known])
        np.testing.assert_allclose(boxes[0][~known], ref[known].mean(), rtol=1e-5)
    else:
        assert not boxes[0].any()
