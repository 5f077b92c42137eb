"""DoG picking: finds blobs of the given size, chunking changes nothing, bad input is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_cryossl.io import PARTICLE_COLUMNS, InputError
from napari_cryossl.picking import AUTO_THRESHOLD, dog_response, dog_sigmas, pick_particles

DIAMETER = 8.0


def blobs(shape, n, diameter=DIAMETER, noise=0.6, seed=0, sign=-1.0):
    """Non-overlapping uniform balls (dark by default) plus Gaussian noise; returns (vol, zyx)."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    margin = diameter / 2 + 1
    while len(centres) < n:
        c = rng.uniform(margin, np.array(shape) - 1 - margin)
        if all(np.linalg.norm(c - o) >= 1.3 * diameter for o in centres):
            centres.append(c)
    grid = np.indices(shape, dtype=np.float32)
    volume = np.zeros(shape, dtype=np.float32)
    for c in centres:
        r2 = sum((grid[i] - c[i]) ** 2 for i in range(3))
        volume[r2 <= (diameter / 2) ** 2] += sign
    volume += rng.normal(0, noise, shape).astype(np.float32)
    return volume, np.array(centres)


def matched(true_zyx, picked_zyx, radius):
    """Fraction of true particles with a pick within `radius` and of picks near a true one."""
    if len(picked_zyx) == 0:
        return 0.0, 0.0
    d_true, _ = cKDTree(picked_zyx).query(true_zyx)
    d_pick, _ = cKDTree(true_zyx).query(picked_zyx)
    return float((d_true <= radius).mean()), float((d_pick <= radius).mean())


def zyx_of(table):
    return table[["z", "y", "x"]].to_numpy(dtype=float)


def test_sigmas_maximise_the_response_to_a_ball():
    """The DoG at a ball's centre is larger at `dog_sigmas` than at smaller or larger scales."""
    diameter = 12.0
    shape = (41, 41, 41)
    grid = np.indices(shape) - 20
    ball = -(np.sum(grid**2, axis=0) <= (diameter / 2) ** 2).astype(np.float32)
    s1, s2 = dog_sigmas(diameter)
    assert s2 / s1 == pytest.approx(1.6)

    def centre_response(scale):
        fine = ndimage.gaussian_filter(ball, s1 * scale)
        coarse = ndimage.gaussian_filter(ball, s2 * scale)
        return (coarse - fine)[20, 20, 20]

    best = centre_response(1.0)
    assert best > 0
    assert best > centre_response(0.8) and best > centre_response(1.25)


def test_finds_dark_blobs_with_the_canonical_table():
    volume, true = blobs((40, 64, 64), 25)
    table = pick_particles(volume, DIAMETER)
    assert list(table.columns) == PARTICLE_COLUMNS
    assert (table["source"] == "auto").all()
    assert (table["class_number"] == 0).all()
    assert table["score"].is_monotonic_decreasing
    assert (table["score"] >= AUTO_THRESHOLD).all()
    recall, precision = matched(true, zyx_of(table), DIAMETER / 4)
    assert recall == 1.0
    assert precision >= 0.9


def test_polarity():
    volume, true = blobs((32, 48, 48), 10, sign=+1.0, seed=3)
    bright = pick_particles(volume, DIAMETER, polarity="bright")
    assert matched(true, zyx_of(bright), 2.0)[0] == 1.0
    dark = pick_particles(volume, DIAMETER, polarity="dark")
    assert matched(true, zyx_of(dark), 2.0)[0] <= 0.2  # bright blobs are not dark particles


def reference_picks(volume, diameter, threshold, min_distance):
    """Whole-volume computation with a brute-force greedy suppression (no chunks, no tree)."""
    dog = dog_response(volume, diameter).astype(np.float64)
    half = max(1, int(min_distance // 2))
    peaks = np.argwhere(dog == ndimage.maximum_filter(dog, size=2 * half + 1, mode="nearest"))
    med = np.median(dog)
    noise = 1.4826 * np.median(np.abs(dog - med))
    score = (dog[tuple(peaks.T)] - med) / noise
    r = diameter / 2
    keep = (score >= threshold) & np.all((peaks >= r) & (peaks <= np.array(volume.shape) - 1 - r), axis=1)
    peaks, score = peaks[keep], score[keep]
    order = np.lexsort((peaks[:, 2], peaks[:, 1], peaks[:, 0], -score))
    kept: list[int] = []
    for i in order:
        if all(np.linalg.norm(peaks[i] - peaks[j]) > min_distance for j in kept):
            kept.append(i)
    return peaks[kept].astype(float), score[kept]


def test_matches_direct_reference_computation():
    """Small volume: the strided statistics grid is every voxel, so scores match exactly."""
    volume, _ = blobs((24, 30, 36), 6, noise=0.8, seed=5)
    table = pick_particles(volume, DIAMETER, threshold=2.0)
    ref_zyx, ref_score = reference_picks(volume, DIAMETER, 2.0, 0.75 * DIAMETER)
    np.testing.assert_array_equal(zyx_of(table), ref_zyx)
    np.testing.assert_allclose(table["score"].to_numpy(), ref_score, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [8, 13, 32])
def test_chunked_result_equals_whole_volume(chunk_size):
    volume, _ = blobs((30, 45, 52), 14, noise=1.0, seed=7)
    whole = pick_particles(volume, DIAMETER, threshold=1.0, chunk_size=64)
    chunked = pick_particles(volume, DIAMETER, threshold=1.0, chunk_size=chunk_size)
    assert len(whole) > 14  # low threshold: noise peaks near chunk borders are included too
    pd.testing.assert_frame_equal(whole, chunked)


def test_memmap_input_and_progress(tmp_path):
    volume, _ = blobs((24, 40, 40), 6, seed=2)
    path = tmp_path / "tomo.raw"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=volume.shape)
    mm[:] = volume
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=volume.shape)
    calls = []
    table = pick_particles(ro, DIAMETER, chunk_size=16, progress=lambda d, n: calls.append((d, n)))
    pd.testing.assert_frame_equal(table, pick_particles(volume, DIAMETER))
    assert calls == [(i, 18) for i in range(1, 19)]


def test_scores_do_not_depend_on_grey_scale():
    volume, _ = blobs((24, 40, 40), 6, seed=4)
    a = pick_particles(volume, DIAMETER)
    b = pick_particles(volume * 250.0 + 1000.0, DIAMETER)
    np.testing.assert_array_equal(zyx_of(a), zyx_of(b))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-3)


def test_min_distance_keeps_the_stronger_of_two_close_blobs():
    shape = (24, 24, 40)
    grid = np.indices(shape)
    volume = np.zeros(shape, dtype=np.float32)
    for centre, depth in (((12, 12, 14), -1.0), ((12, 12, 25), -0.7)):
        r2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
        volume[r2 <= 16] += depth
    volume += np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32)
    apart = pick_particles(volume, DIAMETER, min_distance_px=8)
    assert len(apart) == 2
    together = pick_particles(volume, DIAMETER, min_distance_px=12)
    assert len(together) == 1
    np.testing.assert_allclose(zyx_of(together)[0], (12, 12, 14), atol=1)


def test_border_particles_are_excluded_by_default():
    volume, _ = blobs((24, 32, 32), 1, seed=0, noise=0.05)
    volume[:] = np.random.default_rng(1).normal(0, 0.05, volume.shape)
    grid = np.indices(volume.shape)
    r2 = (grid[0] - 2) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 16) ** 2
    volume[r2 <= 16] -= 1.0
    near_edge = pick_particles(volume, DIAMETER, exclude_border=False)
    assert len(near_edge) >= 1
    assert np.abs(zyx_of(near_edge)[0] - (2, 16, 16)).max() <= 1
    default = pick_particles(volume, DIAMETER)
    assert (zyx_of(default)[:, 0] >= DIAMETER / 2).all()
    assert len(default) < len(near_edge)


def test_threshold_and_max_particles_select_the_best():
    volume, _ = blobs((32, 48, 48), 12, noise=1.0, seed=9)
    loose = pick_particles(volume, DIAMETER, threshold=1.0)
    strict = pick_particles(volume, DIAMETER, threshold=4.0)
    assert 0 < len(strict) < len(loose)
    pd.testing.assert_frame_equal(strict, loose[loose["score"] >= 4.0].reset_index(drop=True))
    top = pick_particles(volume, DIAMETER, threshold=1.0, max_particles=5)
    pd.testing.assert_frame_equal(top, loose.head(5))


def test_pure_noise_gives_few_picks():
    """The automatic threshold rejects most noise: false picks per possible particle site."""
    volume = np.random.default_rng(11).normal(0, 1, (40, 64, 64)).astype(np.float32)
    table = pick_particles(volume, DIAMETER)
    sites = volume.size / (np.pi / 6 * DIAMETER**3)
    assert len(table) / sites < 0.05


def test_constant_volume_has_no_particles():
    table = pick_particles(np.full((16, 16, 16), 3.0, dtype=np.float32), 4.0)
    assert len(table) == 0 and list(table.columns) == PARTICLE_COLUMNS


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.zeros((8, 8, 8)), {"diameter_px": 0}, "positive"),
        (np.zeros((8, 8, 8)), {"diameter_px": -3}, "positive"),
        (np.zeros((8, 8, 8)), {"diameter_px": float("nan")}, "positive"),
        (np.zeros((8, 8, 8)), {"diameter_px": "big"}, "number"),
        (np.zeros((8, 8)), {"diameter_px": 4}, "3D"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "polarity": "black"}, "polarity"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "chunk_size": 4}, "chunk_size"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "max_particles": 0}, "max_particles"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "min_distance_px": -1}, "min_distance"),
    ],
)
def test_bad_input(volume, kwargs, match):
    with pytest.raises(InputError, match=match):
        pick_particles(volume, **kwargs)


def test_non_finite_voxel_is_located(tmp_path):
    from napari_cryossl.io import Tomogram

    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[3, 17, 5] = np.nan
    tomo = Tomogram(path=tmp_path / "t1.mrc", data=volume, voxel_size=10.0)
    with pytest.raises(InputError, match=r"t1\.mrc.*z=3, y=17, x=5"):
        pick_particles(tomo, 4.0, chunk_size=8)
