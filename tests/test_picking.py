"""DoG picking: finds blobs of the given size, chunking changes nothing, bad input is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_cryossl.io import PARTICLE_COLUMNS, InputError
from napari_cryossl.particles.picking import (
    AUTO_THRESHOLD,
    MIN_DISTANCE_FRACTION,
    dog_response,
    dog_sigmas,
    pick_particles,
)

DIAMETER = 10.0


def paint(volume, centre, diameter=DIAMETER, depth=-1.0, kind="blob"):
    """Add one particle: a Gaussian blob whose ±3σ span the diameter (the picker's default
    model) or a uniform ball."""
    grid = np.indices(volume.shape, dtype=np.float32)
    r2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    if kind == "ball":
        volume[r2 <= (diameter / 2) ** 2] += depth
    else:
        s2 = (diameter / 6) ** 2
        volume += depth * np.exp(-r2 / (2 * s2))


def blobs(shape, n, diameter=DIAMETER, noise=0.3, seed=0, sign=-1.0, kind="blob"):
    """Non-overlapping particles (dark by default) plus Gaussian noise; returns (vol, zyx)."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    margin = diameter / 2 + 1
    while len(centres) < n:
        c = rng.uniform(margin, np.array(shape) - 1 - margin)
        if all(np.linalg.norm(c - o) >= 1.2 * diameter for o in centres):
            centres.append(c)
    volume = np.zeros(shape, dtype=np.float32)
    for c in centres:
        paint(volume, c, diameter, sign, kind)
    volume += rng.normal(0, noise, shape).astype(np.float32)
    return volume, np.array(centres)


def matched(true_zyx, picked_zyx, radius):
    """(recall, precision) with one-to-one matching: a true particle counts once, for its
    closest pick within `radius` (duplicate picks of one particle are false positives)."""
    if len(picked_zyx) == 0:
        return 0.0, 0.0
    dist, idx = cKDTree(true_zyx).query(picked_zyx, distance_upper_bound=radius)
    found = {int(idx[i]) for i in np.argsort(dist) if np.isfinite(dist[i])}
    return len(found) / len(true_zyx), len(found) / len(picked_zyx)


def zyx_of(table):
    return table[["z", "y", "x"]].to_numpy(dtype=float)


@pytest.mark.parametrize("profile", ["blob", "ball"])
def test_sigmas_maximise_the_response_to_the_particle_model(profile):
    """At `dog_sigmas`, the DoG at the particle model's centre beats smaller/larger scales."""
    diameter = 16.0
    model = np.zeros((41, 41, 41), dtype=np.float64)
    paint(model, (20, 20, 20), diameter, kind=profile)
    s1, s2 = dog_sigmas(diameter, profile=profile)
    assert s2 / s1 == pytest.approx(1.6)

    def centre_response(scale):
        fine = ndimage.gaussian_filter(model, s1 * scale)
        coarse = ndimage.gaussian_filter(model, s2 * scale)
        return (coarse - fine)[20, 20, 20]

    best = centre_response(1.0)
    assert best > 0
    assert best > centre_response(0.85) and best > centre_response(1.15)


def test_blob_profile_is_finer_than_ball_profile():
    blob, ball = dog_sigmas(20.0), dog_sigmas(20.0, profile="ball")
    np.testing.assert_allclose(blob, (0.1072 * 20, 0.1715 * 20), rtol=2e-3)
    np.testing.assert_allclose(ball, (0.2324 * 20, 0.3719 * 20), rtol=2e-3)


def test_finds_dark_blobs_with_the_canonical_table():
    volume, true = blobs((40, 64, 64), 25)
    table = pick_particles(volume, DIAMETER)
    assert list(table.columns) == PARTICLE_COLUMNS
    assert (table["source"] == "auto").all()
    assert (table["class_number"] == 0).all()
    assert table["score"].is_monotonic_decreasing
    assert (table["score"] >= AUTO_THRESHOLD).all()
    recall, _ = matched(true, zyx_of(table), DIAMETER / 4)
    assert recall == 1.0
    # The particles outrank every noise peak: the best 25 picks are the 25 particles.
    assert matched(true, zyx_of(table.head(25)), DIAMETER / 4) == (1.0, 1.0)


def test_polarity():
    volume, true = blobs((32, 48, 48), 10, sign=+1.0, seed=3)
    bright = pick_particles(volume, DIAMETER, polarity="bright")
    assert matched(true, zyx_of(bright), 2.0)[0] == 1.0
    dark = pick_particles(volume, DIAMETER, polarity="dark")
    assert matched(true, zyx_of(dark), 2.0)[0] <= 0.2  # bright blobs are not dark particles


def test_ball_profile_centres_solid_particles():
    volume, true = blobs((32, 48, 48), 10, seed=6, kind="ball", noise=0.5)
    table = pick_particles(volume, DIAMETER, profile="ball")
    recall, precision = matched(true, zyx_of(table), 1.5)
    assert recall == 1.0 and precision >= 0.9


def reference_picks(volume, diameter, threshold, min_distance):
    """Whole-volume computation with a brute-force greedy suppression (no chunks, no tree)."""
    dog = dog_response(volume, diameter).astype(np.float64)
    half = max(1, int(min_distance // 2))
    peaks = np.argwhere(dog == ndimage.maximum_filter(dog, size=2 * half + 1, mode="nearest"))
    med = np.median(dog)
    noise = 1.4826 * np.median(np.abs(dog - med))
    score = (dog[tuple(peaks.T)] - med) / noise
    r = diameter / 4  # exclude_border=True: a quarter diameter from the faces
    keep = (score >= threshold) & np.all(
        (peaks >= r) & (peaks <= np.array(volume.shape) - 1 - r), axis=1
    )
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
    table = pick_particles(volume, DIAMETER, threshold=2.0, refine=False)
    ref_zyx, ref_score = reference_picks(volume, DIAMETER, 2.0, MIN_DISTANCE_FRACTION * DIAMETER)
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
    # refined centres are sub-voxel: equal up to float32 rounding of the scaled volume
    np.testing.assert_allclose(zyx_of(a), zyx_of(b), atol=1e-3)
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-3)


# Nearly noise-free volumes below: the particles score ~100 noise units, noise peaks < 5,
# so threshold=20 keeps exactly the particles.


def test_min_distance_keeps_the_stronger_of_two_close_blobs():
    volume = np.random.default_rng(0).normal(0, 0.02, (24, 24, 40)).astype(np.float32)
    paint(volume, (12, 12, 14), depth=-1.0)
    paint(volume, (12, 12, 25), depth=-0.7)
    apart = pick_particles(volume, DIAMETER, min_distance_px=9, threshold=20)
    assert len(apart) == 2
    together = pick_particles(volume, DIAMETER, min_distance_px=12, threshold=20)
    assert len(together) == 1
    np.testing.assert_allclose(zyx_of(together)[0], (12, 12, 14), atol=1)


def test_border_particles_are_excluded_by_default():
    volume = np.random.default_rng(1).normal(0, 0.02, (24, 32, 32)).astype(np.float32)
    paint(volume, (2, 16, 16))
    paint(volume, (12, 16, 16))
    near_edge = pick_particles(volume, DIAMETER, exclude_border=False)
    assert len(near_edge) >= 2
    top2 = zyx_of(near_edge)[:2]
    assert np.abs(top2[np.argsort(top2[:, 0])] - [(2, 16, 16), (12, 16, 16)]).max() <= 1
    default = pick_particles(volume, DIAMETER, threshold=20)
    assert len(default) == 1
    np.testing.assert_allclose(zyx_of(default)[0], (12, 16, 16), atol=1)
    strict = pick_particles(volume, DIAMETER, exclude_border=DIAMETER / 2, threshold=0)
    assert (zyx_of(strict) >= DIAMETER / 2).all()
    assert (zyx_of(strict) <= np.array(volume.shape) - 1 - DIAMETER / 2).all()


def test_faces_do_not_create_false_picks():
    """Noise at the faces scores no higher than inside (the volume is continued by a
    constant, not mirrored), so keeping border picks adds few false ones."""
    volume = np.random.default_rng(12).normal(0, 1, (24, 64, 64)).astype(np.float32)
    table = pick_particles(volume, DIAMETER, threshold=2.0, exclude_border=False)
    zyx = zyx_of(table)
    at_face = np.any((zyx < 1) | (zyx > np.array(volume.shape) - 2), axis=1)
    face_fraction = 1 - np.prod(np.array(volume.shape) - 2) / volume.size
    assert at_face.mean() <= face_fraction


def test_threshold_and_max_particles_select_the_best():
    volume, _ = blobs((32, 48, 48), 12, noise=1.0, seed=9)
    loose = pick_particles(volume, DIAMETER, threshold=1.0)
    strict = pick_particles(volume, DIAMETER, threshold=4.0)
    assert 0 < len(strict) < len(loose)
    pd.testing.assert_frame_equal(strict, loose[loose["score"] >= 4.0].reset_index(drop=True))
    top = pick_particles(volume, DIAMETER, threshold=1.0, max_particles=5)
    pd.testing.assert_frame_equal(top, loose.head(5))


def test_false_picks_in_pure_noise_fall_steeply_with_the_threshold():
    """Scores are in noise units: in white noise the automatic threshold leaves about one
    false pick per five particle-sized sites (the price of high recall), threshold 4 about
    one per 150, threshold 4.5 none here."""
    volume = np.random.default_rng(11).normal(0, 1, (40, 64, 64)).astype(np.float32)
    sites = volume.size / (np.pi / 6 * DIAMETER**3)
    rates = [len(pick_particles(volume, DIAMETER, threshold=t)) / sites for t in (None, 4.0, 4.5)]
    assert rates[0] < 0.3
    assert rates[1] < 0.02
    assert rates[2] < 0.005


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
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "profile": "cube"}, "profile"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "chunk_size": 4}, "chunk_size"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "max_particles": 0}, "max_particles"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "min_distance_px": -1}, "min_distance"),
        (np.zeros((8, 8, 8)), {"diameter_px": 4, "exclude_border": -2.0}, "exclude_border"),
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


@pytest.mark.parametrize("snr", [0.1, 0.05])
def test_recall_on_a_simulated_crowded_tomogram(snr, record_property):
    """>= 90 % of the simulator's particles are found within half a diameter (CTF, missing
    wedge, crowding; SNR 0.05 is the paper's); precision is reported and kept sane."""
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(n_classes=4, box_size=24, snr=snr)
    volume, truth = simulate_tomogram((48, 160, 160), 90, config, seed=0)
    diameter = config.particle_diameter_px
    table = pick_particles(volume, diameter, chunk_size=64, refine=False)
    recall, precision = matched(zyx_of(truth), zyx_of(table), diameter / 2)
    record_property("recall", recall)
    record_property("precision", precision)
    print(f"SNR {snr}: {len(table)} picks, recall {recall:.1%}, precision {precision:.1%}")
    assert recall >= 0.9
    assert precision >= 0.35  # a candidate step: the classifier sorts out false picks
    # Refined (the default): better centred, at some cost in recall within half a diameter
    # (measured 2026-12-07: 95.6 % at SNR 0.1, 85.6 % at SNR 0.05; within a quarter
    # diameter 20 % -> 68 % and 19 % -> 44 %).
    refined = pick_particles(volume, diameter, chunk_size=64)
    recall_r, _ = matched(zyx_of(truth), zyx_of(refined), diameter / 2)
    centred = matched(zyx_of(truth), zyx_of(table), diameter / 4)[0]
    centred_r = matched(zyx_of(truth), zyx_of(refined), diameter / 4)[0]
    record_property("recall_refined", recall_r)
    print(f"refined: recall {recall_r:.1%}; within d/4 {centred:.1%} -> {centred_r:.1%}")
    assert recall_r >= (0.9 if snr >= 0.1 else 0.8)
    assert centred_r > centred + 0.2


# --------------------------------------------------------------------------- refinement


def lobed_tomogram(shape=(48, 112, 112), per_kind=10, diameter=20.0, snr=0.1, seed=0):
    """Hollow (cage12), dumbbell and trimer particles of the simulator's synthetic shapes,
    dark, in random poses; missing wedge (±60° about Y), band limit (2.5 voxels) and noise
    white inside that band at `snr` (signal variance in a 32-voxel box around each
    particle over the noise variance). Returns (volume, zyx, kind)."""
    from scipy.spatial.transform import Rotation

    from napari_cryossl.simulate import SimulationConfig, missing_wedge_mask
    from napari_cryossl.simulate.render import _render
    from napari_cryossl.simulate.shapes import _TEMPLATES, _assemblies

    config = SimulationConfig(
        n_classes=len(_TEMPLATES),
        box_size=32,
        voxel_size=10.0,
        particle_diameter_a=10.0 * diameter,
    )
    assemblies = _assemblies(config)
    names = list(_TEMPLATES)
    kinds = ["cage12", "dumbbell", "trimer"]
    rng = np.random.default_rng(seed)
    centres, labels = [], []
    margin = diameter / 2 + 2
    tries = 0
    while len(centres) < per_kind * len(kinds) and tries < 100_000:
        tries += 1
        c = rng.uniform(margin, np.array(shape) - 1 - margin)
        if all(np.linalg.norm(c - o) >= 1.15 * diameter for o in centres):
            centres.append(c)
            labels.append(kinds[len(labels) % len(kinds)])
    density = np.zeros(shape, dtype=np.float32)
    for c, kind in zip(centres, labels, strict=True):
        a = assemblies[names.index(kind)]
        rot = Rotation.random(random_state=rng).as_matrix()
        sub = (a.centres_xyz @ rot.T)[:, ::-1] + c
        density += _render(sub[None], a.sigmas[None], a.weights[None], shape)[0]
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    band = missing_wedge_mask(shape, 60.0) * (np.sqrt(kz**2 + ky**2 + kx**2) <= 0.4)
    signal = -np.fft.irfftn(np.fft.rfftn(density) * band, s=shape).astype(np.float32)
    noise = np.fft.irfftn(np.fft.rfftn(rng.normal(size=shape)) * band, s=shape)
    boxes = [signal[tuple(slice(max(int(v) - 16, 0), int(v) + 16) for v in c)] for c in centres]
    signal_var = float(np.mean([b.var() for b in boxes]))
    noise *= np.sqrt(signal_var / snr) / noise.std()
    return (signal + noise).astype(np.float32), np.array(centres), np.array(labels)


def test_refinement_centres_hollow_and_lobed_particles(record_property):
    """DoG peaks of shells, dumbbells and trimers sit on a wall or a lobe; refined picks
    are within half a radius of >= 80 % of each kind's particles, the DoG peaks are not."""
    diameter = 20.0
    volume, true, kind = lobed_tomogram(diameter=diameter)
    radius = diameter / 2
    plain = pick_particles(volume, diameter, refine=False)
    refined = pick_particles(volume, diameter)
    for name in ("cage12", "dumbbell", "trimer"):
        sel = kind == name
        before, _ = matched(true[sel], zyx_of(plain), radius / 2)
        after, _ = matched(true[sel], zyx_of(refined), radius / 2)
        record_property(f"{name}_before", before)
        record_property(f"{name}_after", after)
        print(f"{name}: within {radius / 2:g} voxels: DoG {before:.0%}, refined {after:.0%}")
        assert after >= 0.8
    all_before, _ = matched(true, zyx_of(plain), radius / 2)
    all_after, precision = matched(true, zyx_of(refined), radius / 2)
    print(f"all: DoG {all_before:.0%}, refined {all_after:.0%} (precision {precision:.0%})")
    assert all_before < 0.8 <= all_after


def test_refinement_keeps_solid_blobs_in_place_and_merges_duplicates():
    volume = np.random.default_rng(3).normal(0, 0.02, (32, 48, 48)).astype(np.float32)
    paint(volume, (16, 20, 20), diameter=16)
    from napari_cryossl.particles.picking import refine_centres

    moved = refine_centres(volume, [(16, 20, 20), (16, 24, 22), (13, 18, 21)], 16.0)
    np.testing.assert_allclose(moved, [(16, 20, 20)] * 3, atol=0.6)
    assert len(refine_centres(volume, np.zeros((0, 3)), 16.0)) == 0
