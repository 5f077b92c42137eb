"""Template matching: rotations, RELION angles, noise units, orientation, picks, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from napari_cryossl.io import PARTICLE_COLUMNS, InputError
from napari_cryossl.particles.template_matching import (
    ANGLE_COLUMNS,
    auto_threshold,
    match_template,
    relion_angles,
    rotation_set,
    rotations_from_relion,
    template_diameter,
)


def shape_parts(name: str, diameter: float = 20.0):
    """One synthetic class of the simulator: (centres xyz, sigmas, weights)."""
    from napari_cryossl.simulate import SimulationConfig
    from napari_cryossl.simulate.shapes import _TEMPLATES, _assemblies

    config = SimulationConfig(
        n_classes=len(_TEMPLATES), box_size=32, particle_diameter_a=10.0 * diameter
    )
    a = _assemblies(config)[list(_TEMPLATES).index(name)]
    return a.centres_xyz, a.sigmas, a.weights


def render(parts, rotation, centre_zyx, shape):
    """The class posed by `rotation` (x_particle = R x_template) at `centre_zyx`."""
    from napari_cryossl.simulate.render import _render

    centres, sigmas, weights = parts
    sub = (centres @ np.asarray(rotation).T)[:, ::-1] + np.asarray(centre_zyx, float)
    return _render(sub[None], sigmas[None], weights[None], tuple(shape))[0]


def template_of(parts, size=37):
    return render(parts, np.eye(3), (size // 2,) * 3, (size,) * 3)


def misorientation(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


def matched(true_zyx, picked_zyx, radius):
    if len(picked_zyx) == 0:
        return 0.0, 0.0
    dist, idx = cKDTree(true_zyx).query(picked_zyx, distance_upper_bound=radius)
    found = {int(idx[i]) for i in np.argsort(dist) if np.isfinite(dist[i])}
    return len(found) / len(true_zyx), len(found) / len(picked_zyx)


def zyx_of(table):
    return table[["z", "y", "x"]].to_numpy(dtype=float)


# ------------------------------------------------------------------------------ rotations


def test_rotation_set_is_near_uniform_and_covers_so3():
    step = 30.0
    rots = rotation_set(step)
    expected = 8 * math.pi**2 / math.radians(step) ** 3
    assert 0.8 * expected <= len(rots) <= 1.3 * expected
    np.testing.assert_allclose(
        rots @ np.transpose(rots, (0, 2, 1)), np.broadcast_to(np.eye(3), rots.shape), atol=1e-9
    )
    # every rotation of SO(3) is within about one step of the set
    probe = Rotation.random(300, random_state=0)
    grid = Rotation.from_matrix(rots)
    nearest = [
        np.degrees((grid.inv() * Rotation.from_quat([q] * len(rots))).magnitude()).min()
        for q in probe.as_quat()
    ]
    assert max(nearest) <= step
    # C_n symmetry: 1/n of the in-plane angles
    assert len(rotation_set(step, symmetry=4)) == pytest.approx(len(rots) / 4, rel=0.1)


def test_relion_angles_follow_relions_matrix():
    """RELION's Euler_angles2matrix(rot, tilt, psi) is the pose (reference -> particle)."""

    def relion_matrix(rot, tilt, psi):  # RELION src/euler.cpp
        a, b, g = np.radians([rot, tilt, psi])
        ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
        cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
        return np.array(
            [
                [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                [sc, ss, cb],
            ]
        )

    angles = np.array([[10.0, 40.0, -70.0], [-150.0, 120.0, 33.0]])
    poses = rotations_from_relion(angles)
    for pose, (rot, tilt, psi) in zip(poses, angles, strict=True):
        np.testing.assert_allclose(pose, relion_matrix(rot, tilt, psi), atol=1e-12)
    np.testing.assert_allclose(rotations_from_relion(relion_angles(poses)), poses, atol=1e-9)


def test_auto_threshold_is_the_normal_tail():
    from scipy.stats import norm

    assert auto_threshold(1e9, 1.0) == pytest.approx(norm.isf(1e-9), rel=1e-6)
    assert auto_threshold(1e9, 10.0) < auto_threshold(1e9, 1.0)


def test_template_diameter_of_a_ball():
    grid = np.indices((41, 41, 41)) - 20
    ball = (np.sqrt((grid**2).sum(axis=0)) <= 10).astype(np.float32)
    assert template_diameter(ball) == pytest.approx(20.0, rel=0.05)


# ------------------------------------------------------------------------------ matching


def test_orientation_of_an_asymmetric_template_is_recovered():
    """Noise-free, an L-shaped assembly in two poses near rotations of the searched set:
    the picks are at the centres and their RELION angles give back the poses."""
    parts = shape_parts("lshape")
    rots = rotation_set(30.0)
    rng = np.random.default_rng(4)
    shape = (40, 48, 88)
    centres = [(20.0, 24.0, 22.0), (19.0, 23.0, 64.0)]
    volume = np.zeros(shape, dtype=np.float32)
    truth = []
    for k, c in zip((17, 300), centres, strict=True):
        nudge = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.radians(6)).as_matrix()
        pose = rots[k] @ nudge
        truth.append(pose)
        volume -= render(parts, pose, c, shape)
    table = match_template(
        volume, template_of(parts), rotations=rots, tilt_range_deg=90, cpu_threads=1
    )
    assert list(table.columns[: len(PARTICLE_COLUMNS)]) == PARTICLE_COLUMNS
    assert all(c in table for c in ANGLE_COLUMNS)
    top = table.head(2)
    recall, _ = matched(np.array(centres), zyx_of(top), 1.5)
    assert recall == 1.0
    found = rotations_from_relion(top[list(ANGLE_COLUMNS)].to_numpy())
    for pick_zyx, pose in zip(zyx_of(top), found, strict=True):
        i = int(np.argmin(np.linalg.norm(np.array(centres) - pick_zyx, axis=1)))
        assert misorientation(pose, truth[i]) < 12.0


def test_blocks_give_the_whole_volume_result():
    parts = shape_parts("trimer", 14.0)
    rng = np.random.default_rng(1)
    shape = (36, 60, 60)
    volume = rng.normal(0, 0.05, shape).astype(np.float32)
    for c in [(18, 15, 16), (17, 44, 40), (20, 20, 45)]:
        volume -= render(parts, Rotation.random(random_state=rng).as_matrix(), c, shape)
    kwargs = dict(rotations=rotation_set(90.0), threshold=3.0, cpu_threads=1)
    whole = match_template(volume, template_of(parts, 29), **kwargs)
    blocks = match_template(volume, template_of(parts, 29), max_block_voxels=150_000, **kwargs)
    assert len(whole) >= 3
    np.testing.assert_array_equal(zyx_of(whole.head(3)), zyx_of(blocks.head(3)))
    np.testing.assert_allclose(whole["cc"].head(3), blocks["cc"].head(3), rtol=1e-4)


def test_progress_and_stop():
    from napari_cryossl.particles.template_matching import MatchingCancelled

    volume = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    parts = shape_parts("dimer", 10.0)
    calls = []
    match_template(
        volume,
        template_of(parts, 21),
        rotations=rotation_set(90.0),
        cpu_threads=1,
        progress=lambda d, n: calls.append((d, n)),
    )
    assert calls and calls[-1][0] == calls[-1][1]
    with pytest.raises(MatchingCancelled):
        match_template(
            volume, template_of(parts, 21), rotations=rotation_set(90.0), should_stop=lambda: True
        )


@pytest.mark.parametrize(
    ("template", "kwargs", "match"),
    [
        (np.zeros((5, 5)), {}, "3D"),
        (np.zeros((9, 9, 9)), {}, "positive density"),
        (np.ones((9, 9, 9)), {"mask": "cube"}, "mask"),
        (np.ones((9, 9, 9)), {"tilt_range_deg": 0}, "tilt"),
        (np.ones((9, 9, 9)), {"polarity": "grey"}, "polarity"),
        (np.ones((9, 9, 9)), {"false_alarms": 0}, "false_alarms"),
    ],
)
def test_bad_input(template, kwargs, match):
    with pytest.raises(InputError, match=match):
        match_template(np.zeros((16, 16, 16), np.float32), template, **kwargs)


@pytest.mark.slow
def test_finds_its_class_in_a_simulated_tomogram(record_property):
    """SNR 0.1, CTF, missing wedge, crowded with four classes of equal mass and size and
    cluttered (gold beads, a vesicle, actin filaments, a microtubule): the true template
    (ring6) finds >= 90 % of its class within half a radius, and >= 60 % of its picks are
    that class (the others are neighbours of other classes), at the automatic threshold
    (one expected false alarm)."""
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram_details
    from napari_cryossl.simulate.shapes import _assemblies

    # a 1.28 µm field: denser clutter than the defaults so that each kind is there
    config = SimulationConfig(
        n_classes=4, box_size=24, snr=0.1, gold_per_um2=300, vesicles_per_um2=60,
        actin_per_um2=120, microtubules_per_um2=60, ice_per_um2=0, membranes_per_um2=0,
    )
    sim = simulate_tomogram_details((48, 128, 128), 60, config, seed=0)
    volume, truth = sim.volume, sim.particles
    assert {"gold", "vesicle", "actin", "microtubule"} <= set(sim.clutter["kind"])
    a = _assemblies(config)[0]
    size = int(2 * np.ceil(a.radius) + 3)
    template = render(
        (a.centres_xyz, a.sigmas, a.weights), np.eye(3), (size // 2,) * 3, (size,) * 3
    )
    table = match_template(volume, template, angular_step=20.0, resolution_px=3.0, cpu_threads=1)
    ring = truth[truth["class_number"] == 1]
    radius = config.particle_diameter_px / 2
    recall, precision = matched(zyx_of(ring), zyx_of(table), radius / 2)
    record_property("recall", recall)
    record_property("precision", precision)
    print(f"{len(table)} picks, recall {recall:.0%}, precision {precision:.0%}, {table.attrs}")
    assert recall >= 0.9
    assert precision >= 0.6


# ------------------------------------------------------------------------------ CLI


def test_cli_pick_with_a_template_writes_angles_and_scores(tmp_path, capsys):
    import starfile

    from napari_cryossl.cli import main
    from napari_cryossl.io import write_mrc

    parts = shape_parts("lshape", 16.0)
    rng = np.random.default_rng(2)
    shape = (32, 48, 80)
    volume = rng.normal(0, 0.02, shape).astype(np.float32)
    centres = [(16, 22, 20), (15, 24, 58)]
    for c in centres:
        volume -= render(parts, Rotation.random(random_state=rng).as_matrix(), c, shape)
    write_mrc(tmp_path / "tomo.mrc", volume, voxel_size=10.0)
    write_mrc(tmp_path / "template.mrc", template_of(parts, 33), voxel_size=10.0)
    out = tmp_path / "picks.star"
    code = main(
        [
            "pick",
            str(tmp_path / "tomo.mrc"),
            "--template",
            str(tmp_path / "template.mrc"),
            "--angular-step",
            "40",
            "--tilt-range",
            "90",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "rotations" in capsys.readouterr().err
    star = starfile.read(out)
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnAutopickFigureOfMerit"):
        assert label in star.columns
    xyz = star[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy(float)
    assert matched(np.array(centres, float), xyz, 3.0)[0] == 1.0
    assert (star["rlnAutopickFigureOfMerit"] > 0).all()


def test_cli_pick_needs_a_diameter_or_a_template(tmp_path):
    from napari_cryossl.cli import main
    from napari_cryossl.io import write_mrc

    write_mrc(tmp_path / "tomo.mrc", np.zeros((16, 16, 16), np.float32), voxel_size=10.0)
    assert main(["pick", str(tmp_path / "tomo.mrc"), "--out", str(tmp_path / "p.star")]) == 2


def test_pure_noise_gives_about_the_expected_false_alarms_whatever_its_scale():
    """In band-limited noise the automatic threshold (one expected false alarm) leaves at
    most a few picks, and the scores do not depend on the grey scale."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.normal(size=(32, 64, 64)), 1.0).astype(np.float32)
    parts = shape_parts("trimer", 12.0)
    kwargs = dict(rotations=rotation_set(45.0), cpu_threads=1)
    table = match_template(noise, template_of(parts, 25), **kwargs)
    assert len(table) <= 3
    low = match_template(noise, template_of(parts, 25), threshold=3.0, **kwargs)
    scaled = match_template(noise * 40.0 + 7.0, template_of(parts, 25), threshold=3.0, **kwargs)
    np.testing.assert_allclose(low["score"], scaled["score"], rtol=1e-3)
