"""The simulator: honest ground truth (classes, geometry, optics, noise, files)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from napari_cryossl.io import PARTICLE_COLUMNS, InputError
from napari_cryossl.simulate import (
    SimulationConfig,
    class_names,
    class_templates,
    contrast_transfer,
    missing_wedge_mask,
    simulate_subtomogram_details,
    simulate_subtomograms,
    simulate_to_disk,
    simulate_tomogram,
)

# Only the physics under test is switched on in each test; everything else off.
PLAIN = SimulationConfig(
    n_classes=10,
    box_size=32,
    snr=None,
    tilt_range_deg=90.0,
    apply_ctf=False,
    n_neighbors=0,
    max_shift_px=0.0,
)


def _mass_and_rg(density: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Total mass, radius of gyration and centre of mass (zyx) of a positive density."""
    grid = np.indices(density.shape).reshape(3, -1).T.astype(float)
    w = density.ravel().astype(float)
    mass = w.sum()
    com = (grid * w[:, None]).sum(axis=0) / mass
    rg = math.sqrt((((grid - com) ** 2).sum(axis=1) * w).sum() / mass)
    return mass, rg, com


def _distance_distribution(density: np.ndarray) -> np.ndarray:
    """Rotation-invariant shape descriptor: cumulative distribution of pair distances.

    The autocorrelation (zero-padded, so nothing wraps) summed over 2-voxel shells,
    i.e. the density-weighted histogram of distances between two points of the object.
    """
    n = density.shape[0]
    size = (2 * n,) * 3
    power = np.abs(np.fft.rfftn(density, s=size)) ** 2
    autocorrelation = np.fft.irfftn(power, s=size)
    f = np.fft.fftfreq(2 * n) * 2 * n
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    shells = np.minimum(r / 2, n // 2 - 1).astype(int).ravel()
    histogram = np.bincount(shells, autocorrelation.ravel(), minlength=n // 2)
    return np.cumsum(histogram) / histogram.sum()


# --------------------------------------------------------------------------- classes


def test_class_names_are_distinct_and_stable():
    names = class_names(16)
    assert len(set(names)) == 16
    assert names[:3] == ["ring6", "rod", "dimer"]
    assert class_names(20)[:16] == names
    assert class_names(20)[16:] == ["assembly17", "assembly18", "assembly19", "assembly20"]
    with pytest.raises(InputError, match="n_classes"):
        class_names(0)


def test_classes_have_equal_mass_and_radius_of_gyration():
    # Each class rotated at random: total intensity and Rg must not give the class away.
    volumes, labels = simulate_subtomograms(3, PLAIN, seed=1)
    stats = np.array([_mass_and_rg(-v)[:2] for v in volumes])
    per_class = np.array([stats[labels == c].mean(axis=0) for c in range(1, 11)])
    spread = per_class.max(axis=0) / per_class.min(axis=0) - 1
    assert spread[0] < 0.02, f"total intensity differs by {spread[0]:.1%} between classes"
    assert spread[1] < 0.03, f"radius of gyration differs by {spread[1]:.1%} between classes"
    # and the values are what the configuration promises
    assert per_class[:, 0].mean() == pytest.approx(math.pi / 6 * 15**3, rel=0.02)
    assert per_class[:, 1].mean() == pytest.approx(0.35 * 15, rel=0.03)


def test_classes_are_structurally_distinct():
    # A rotation-invariant descriptor: a class seen in another orientation must match
    # its own template far better than any other class matches it. Fine voxels (5 Å)
    # keep the sampling error of the rotated Gaussians small.
    config = dataclasses.replace(PLAIN, n_classes=16, box_size=40, voxel_size=5.0)
    profiles = np.array([_distance_distribution(t) for t in class_templates(config)])
    rotated, labels = simulate_subtomograms(1, config, seed=2)
    within = max(
        np.abs(_distance_distribution(-v) - profiles[c - 1]).max()
        for v, c in zip(rotated, labels, strict=True)
    )
    between = min(
        np.abs(profiles[i] - profiles[j]).max() for i in range(16) for j in range(i + 1, 16)
    )
    assert between > 3 * within, (between, within)


def test_class_templates_do_not_depend_on_the_number_of_classes():
    few = class_templates(dataclasses.replace(PLAIN, n_classes=3))
    many = class_templates(dataclasses.replace(PLAIN, n_classes=18))
    # equal up to float32 rounding (numpy's SIMD paths differ with the array's size)
    np.testing.assert_allclose(few, many[:3], rtol=1e-6, atol=1e-9 * float(np.abs(many).max()))
    assert not np.allclose(many[16], many[17])  # procedural classes beyond the named ones


# --------------------------------------------------------------------------- geometry


def test_rotations_are_uniform_and_shifts_move_the_particle():
    config = dataclasses.replace(PLAIN, n_classes=4, box_size=24, max_shift_px=3.0)
    sim = simulate_subtomogram_details(40, config, seed=3)
    r = sim.rotations
    np.testing.assert_allclose(
        r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    # E[R] = 0 for the uniform distribution on SO(3); each entry has variance 1/3.
    assert np.abs(r.mean(axis=0)).max() < 4 * math.sqrt(1 / 3 / len(r))
    assert np.abs(sim.shifts_zyx).max() <= 3.0
    assert sim.shifts_zyx.std() > 1.0
    # the centre of mass of the (negated) volume is the box centre plus the shift
    for vol, shift in zip(sim.volumes[:10], sim.shifts_zyx[:10], strict=True):
        _, _, com = _mass_and_rg(-vol)
        np.testing.assert_allclose(com, 24 // 2 + shift, atol=0.05)
    # and the volume is the class template moved by (R, shift): x_particle = R x_template
    # in xyz, i.e. template index (zyx) = P R^T P (index - centre - shift) + centre
    from scipy.ndimage import affine_transform

    templates = class_templates(config)
    flip = np.eye(3)[::-1]
    centre = np.full(3, 24 // 2)
    for vol, c, rot, shift in list(
        zip(sim.volumes, sim.class_numbers, r, sim.shifts_zyx, strict=True)
    )[:8]:
        m = flip @ rot.T @ flip
        moved = affine_transform(templates[c - 1], m, offset=centre - m @ (centre + shift), order=3)
        assert np.corrcoef(moved.ravel(), -vol.ravel())[0, 1] > 0.97


def test_neighbours_crowd_the_box_without_covering_the_particle():
    config = dataclasses.replace(PLAIN, n_classes=6, n_neighbors=4, max_shift_px=2.0)
    sim = simulate_subtomogram_details(4, config, seed=4)
    mass = math.pi / 6 * config.particle_diameter_px**3
    assert sim.n_neighbors.mean() > 2
    grid = np.indices((32, 32, 32)).transpose(1, 2, 3, 0)
    box_mass, core_mass = [], []
    for vol, shift in zip(sim.volumes, sim.shifts_zyx, strict=True):
        near = np.linalg.norm(grid - (16 + shift), axis=-1) < config.particle_diameter_px / 2
        box_mass.append(-vol.sum())
        core_mass.append(-vol[near].sum())
    # neighbours add mass to the box, but little of it reaches the particle itself
    assert np.mean(box_mass) > 1.5 * mass
    assert np.mean(core_mass) < 1.0 * mass
    assert np.max(core_mass) < 1.15 * mass


def test_same_seed_same_data_and_noise_independent_of_geometry():
    config = SimulationConfig(n_classes=3, box_size=24, snr=0.05)
    a, la = simulate_subtomograms(3, config, seed=5)
    b, lb = simulate_subtomograms(3, config, seed=5)
    c, _ = simulate_subtomograms(3, config, seed=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == (9, 24, 24, 24)
    assert sorted(la.tolist()) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


# --------------------------------------------------------------------------- optics and noise


def test_ctf_formula():
    config = SimulationConfig(defocus_um=5.0, voltage_kv=300.0, cs_mm=0.0, amplitude_contrast=0.1)
    # at k = 0 only amplitude contrast transfers
    assert contrast_transfer(np.array([0.0]), config)[0] == pytest.approx(0.1)
    # the first zero: tan(π λ Δf k²) = -A / sqrt(1 - A²) -> just beyond λ Δf k² = 1
    lam = 12.2643 / math.sqrt(300e3 * (1 + 0.978466e-6 * 300e3))
    k0 = math.sqrt((math.pi - math.atan(0.1 / math.sqrt(1 - 0.01))) / (math.pi * lam * 5e4))
    values = contrast_transfer(np.array([0.98 * k0, 1.02 * k0]), config)
    assert values[0] > 0 > values[1]
    flipped = dataclasses.replace(config, phase_flip=True)
    k = np.linspace(0, 0.05, 50)
    np.testing.assert_allclose(contrast_transfer(k, flipped), np.abs(contrast_transfer(k, config)))
    damped = dataclasses.replace(config, bfactor=400.0)
    assert abs(contrast_transfer(np.array([0.04]), damped)[0]) < abs(
        contrast_transfer(np.array([0.04]), config)[0]
    )


def test_missing_wedge_mask_geometry():
    mask = missing_wedge_mask((32, 32, 32), 60.0)
    assert mask.shape == (32, 32, 17)
    assert mask[0, :, 0].all()  # the tilt axis (ky) is always measured
    assert not mask[5, 0, 1]  # near the beam axis kz: missing
    assert mask[1, 0, 5]  # near kx: measured
    # ±60° keeps 2/3 of the (kx, kz) directions
    assert mask[:, 0, :].mean() == pytest.approx(2 / 3, abs=0.06)
    assert missing_wedge_mask((16, 16, 16), 90.0).all()


def test_protein_is_dark_and_ctf_keeps_it_dark():
    no_ctf = dataclasses.replace(PLAIN, n_classes=4, tilt_range_deg=60.0)
    with_ctf = dataclasses.replace(no_ctf, apply_ctf=True)
    a, _ = simulate_subtomograms(2, no_ctf, seed=7)
    b, _ = simulate_subtomograms(2, with_ctf, seed=7)  # same geometry
    centre = np.s_[:, 12:20, 12:20, 12:20]
    assert (a[centre].mean(axis=(1, 2, 3)) < 0).all()
    assert (b[centre].mean(axis=(1, 2, 3)) < 0).all()
    for x, y in zip(a, b, strict=True):
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.3


def _wedge_power_fraction(volumes: np.ndarray) -> float:
    """Fraction of the power of `volumes` in their own missing wedge (±60°)."""
    power = np.abs(np.fft.rfftn(volumes, axes=(1, 2, 3))) ** 2
    missing = ~missing_wedge_mask(volumes.shape[1:], 60.0)
    return float(power[:, missing].sum() / power.sum())


def test_wedge_removes_signal_and_noise_in_the_missing_region():
    # Signal and noise are filtered in a padded box and cropped, as when a subtomogram
    # is cut out of a tomogram: only a little power leaks back into the wedge.
    config = SimulationConfig(n_classes=3, box_size=32, snr=None)
    clean, _ = simulate_subtomograms(2, config, seed=8)
    noisy, _ = simulate_subtomograms(2, dataclasses.replace(config, snr=0.05), seed=8)
    assert _wedge_power_fraction(clean) < 0.1
    assert _wedge_power_fraction(noisy - clean) < 0.1
    full, _ = simulate_subtomograms(2, dataclasses.replace(config, tilt_range_deg=90.0), seed=8)
    assert _wedge_power_fraction(full) > 0.2


@pytest.mark.parametrize("snr", [0.05, 0.03, 1.0])
def test_measured_snr_matches_requested(snr):
    clean_config = SimulationConfig(n_classes=4, box_size=24, snr=None)
    clean, _ = simulate_subtomograms(3, clean_config, seed=9)
    noisy, _ = simulate_subtomograms(3, dataclasses.replace(clean_config, snr=snr), seed=9)
    noise = noisy - clean
    measured = clean.var(axis=(1, 2, 3)).mean() / noise.var(axis=(1, 2, 3)).mean()
    assert measured == pytest.approx(snr, rel=0.03)
    # one noise level for the whole set, as in a tomogram
    np.testing.assert_allclose(noise.std(axis=(1, 2, 3)), noise.std(), rtol=0.01)


def test_band_limit_confines_signal_and_noise():
    # Everything beyond 1/lowpass_a is gone; without a band limit the noise is white.
    config = SimulationConfig(n_classes=2, box_size=24, snr=0.05, lowpass_a=30.0)
    volume, _ = simulate_tomogram((32, 48, 48), 4, config, seed=13)
    f = [np.fft.fftfreq(n, d=10.0) for n in volume.shape]
    k = np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
    power = np.abs(np.fft.fftn(volume)) ** 2
    # (the signal is filtered in a padded volume and cropped: a trace leaks back)
    assert power[k > 1 / 30.0].sum() < 1e-4 * power.sum()
    white = dataclasses.replace(config, lowpass_a=None, snr=1e-3)  # noise-dominated
    volume, _ = simulate_tomogram((32, 48, 48), 4, white, seed=13)
    power = np.abs(np.fft.fftn(volume)) ** 2
    # the wedge removes the same fraction of every shell, so shells compare directly
    high, low = power[k > 1 / 30.0].mean(), power[(k < 1 / 60.0) & (k > 0)].mean()
    assert 0.5 < high / low < 2.0


def test_defocus_spread_changes_the_ctf_per_subtomogram():
    config = SimulationConfig(n_classes=2, box_size=24, snr=None)
    a, _ = simulate_subtomograms(2, config, seed=10)
    b, _ = simulate_subtomograms(2, dataclasses.replace(config, defocus_spread_um=1.0), seed=10)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert not np.allclose(a, b)


# --------------------------------------------------------------------------- tomogram

TOMO = SimulationConfig(n_classes=4, box_size=24, snr=0.05)


def test_tomogram_places_particles_apart_and_dark():
    clean_config = dataclasses.replace(TOMO, snr=None)
    volume, table = simulate_tomogram((40, 96, 96), 20, clean_config, seed=11)
    assert volume.shape == (40, 96, 96) and volume.dtype == np.float32
    assert list(table.columns) == PARTICLE_COLUMNS
    assert list(table["source"].unique()) == ["simulated"]
    assert sorted(table["class_number"].value_counts().tolist()) == [5, 5, 5, 5]
    zyx = table[["z", "y", "x"]].to_numpy()
    margin = TOMO.particle_diameter_px / 2
    assert (zyx >= margin).all() and (zyx <= np.array([40, 96, 96]) - 1 - margin).all()
    d = np.linalg.norm(zyx[:, None] - zyx[None], axis=-1) + np.eye(len(zyx)) * 1e9
    assert d.min() >= 0.8 * TOMO.particle_diameter_px
    # protein is dark at the particle centres (coordinates are x, y, z in voxels)
    idx = np.floor(zyx + 0.5).astype(int)
    assert volume[idx[:, 0], idx[:, 1], idx[:, 2]].mean() < volume.mean() - volume.std()


def test_tomogram_snr_and_determinism():
    clean, _ = simulate_tomogram((32, 64, 64), 8, dataclasses.replace(TOMO, snr=None), seed=12)
    noisy, table = simulate_tomogram((32, 64, 64), 8, TOMO, seed=12)
    again, _ = simulate_tomogram((32, 64, 64), 8, TOMO, seed=12)
    np.testing.assert_array_equal(noisy, again)
    noise = noisy - clean
    b = TOMO.box_size
    boxes = []
    for z, y, x in np.floor(table[["z", "y", "x"]].to_numpy() + 0.5).astype(int):
        lo = np.maximum([z - b // 2, y - b // 2, x - b // 2], 0)
        boxes.append(
            clean[lo[0] : z - b // 2 + b, lo[1] : y - b // 2 + b, lo[2] : x - b // 2 + b].var()
        )
    assert np.mean(boxes) / noise.var() == pytest.approx(0.05, rel=0.03)
    # the noise of a tomogram also lacks the missing wedge
    power = np.abs(np.fft.rfftn(noise)) ** 2
    assert power[~missing_wedge_mask(noise.shape, 60.0)].sum() < 1e-8 * power.sum()
    # "volume" reference: SNR over the whole tomogram
    vol_config = dataclasses.replace(TOMO, tomogram_snr_reference="volume")
    noisy_v, _ = simulate_tomogram((32, 64, 64), 8, vol_config, seed=12)
    assert clean.var() / (noisy_v - clean).var() == pytest.approx(0.05, rel=0.03)


def test_tomogram_too_small_for_its_particles():
    with pytest.raises(InputError, match="could place only"):
        simulate_tomogram((24, 40, 40), 50, TOMO, seed=0)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"snr": -1.0}, "snr"),
        ({"tilt_range_deg": 120.0}, "tilt_range_deg"),
        ({"box_size": 12}, "do not fit"),
        ({"n_classes": 0}, "n_classes"),
        ({"amplitude_contrast": 1.0}, "amplitude_contrast"),
        ({"tomogram_snr_reference": "box"}, "tomogram_snr_reference"),
        ({"neighbor_classes": "same"}, "neighbor_classes"),
        ({"lowpass_a": 0.0}, "lowpass_a"),
    ],
)
def test_bad_settings_are_input_errors(change, word):
    with pytest.raises(InputError, match=word):
        SimulationConfig(**change)


def test_bad_arguments_are_input_errors():
    config = SimulationConfig(n_classes=2, box_size=16)
    with pytest.raises(InputError, match="seed"):
        simulate_subtomograms(1, config, seed=-1)
    with pytest.raises(InputError, match="n_per_class"):
        simulate_subtomograms(-2, config)
    with pytest.raises(InputError, match="tomogram shape"):
        simulate_tomogram((16, 16), 1, config)


# --------------------------------------------------------------------------- files


def test_simulate_to_disk_round_trip(tmp_path):
    from napari_cryossl.io import read_mrc, read_particles

    config = SimulationConfig(n_classes=3, box_size=16, voxel_size=20.0, snr=0.05)
    paths = simulate_to_disk(
        tmp_path / "sim",
        config,
        n_per_class=2,
        tomogram_shape=(24, 48, 40),
        n_tomogram_particles=4,
        seed=3,
    )
    assert set(paths) == {"particles_star", "tomogram", "tomogram_particles_star", "metadata"}

    # subtomograms: relative paths in the STAR, one MRC each, same data as in memory
    text = paths["particles_star"].read_text()
    assert "subtomograms/subtomo_000001.mrc" in text and str(tmp_path) not in text
    particles = read_particles(paths["particles_star"])
    volumes, labels = simulate_subtomograms(2, config, seed=3)
    np.testing.assert_array_equal(particles["class_number"].to_numpy(), labels)
    for i, name in enumerate(particles["image_name"]):
        data, voxel_size = read_mrc(name)
        assert voxel_size == pytest.approx(20.0)
        np.testing.assert_array_equal(data, volumes[i])

    # tomogram: pixel coordinates and classes as simulated
    tomo, voxel_size = read_mrc(paths["tomogram"])
    volume, truth = simulate_tomogram((24, 48, 40), 4, config, seed=3)
    assert voxel_size == pytest.approx(20.0)
    np.testing.assert_array_equal(tomo, volume)
    table = read_particles(paths["tomogram_particles_star"])
    np.testing.assert_allclose(
        table[["x", "y", "z"]].to_numpy(), truth[["x", "y", "z"]].to_numpy(), atol=1e-3
    )
    np.testing.assert_array_equal(
        table["class_number"].to_numpy(), truth["class_number"].to_numpy()
    )
    assert set(table["tomo_name"]) == {"tomogram.mrc"}


def test_simulate_to_disk_needs_something_to_do(tmp_path):
    with pytest.raises(InputError, match="nothing to simulate"):
        simulate_to_disk(tmp_path, SimulationConfig(), n_per_class=0)
