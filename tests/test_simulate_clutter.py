"""Clutter in simulated tomograms: gold, membranes, ice, filaments, carbon (issue 26).

Real simulations, real files: the truth table is checked against the rendered density
and the imaged volume, the switch and the amounts against the table, and
`cryossl simulate` against the file it writes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_cryossl.io import InputError, particle_zyx
from napari_cryossl.simulate import (
    CLUTTER_COLUMNS,
    CLUTTER_KINDS,
    SimulationConfig,
    clutter_distance,
    clutter_mask,
    match_clutter,
    read_clutter,
    simulate_subtomograms,
    simulate_tomogram,
    simulate_tomogram_details,
)

SHAPE = (48, 128, 128)  # 10 Å voxels: 0.0164 µm² of field of view
AREA_UM2 = 128 * 128 * (10 * 1e-4) ** 2
NONE = dict(
    gold_per_um2=0.0,
    vesicles_per_um2=0.0,
    membranes_per_um2=0.0,
    ice_per_um2=0.0,
    actin_per_um2=0.0,
    microtubules_per_um2=0.0,
)
# Every kind several times over in a small tomogram.
MANY = dict(
    gold_per_um2=400.0,
    vesicles_per_um2=120.0,
    membranes_per_um2=60.0,
    ice_per_um2=60.0,
    actin_per_um2=250.0,
    microtubules_per_um2=120.0,
    carbon_edge=True,
)


@pytest.fixture(scope="module")
def cluttered():
    # real complexes: their density is protein's (the synthetic shapes' Gaussian subunits
    # peak far above it), so "several times protein" can be checked voxel by voxel
    config = SimulationConfig(
        n_classes=3, snr=None, structures=("TRiC", "apoferritin", "RuvAB"), **MANY
    )
    return config, simulate_tomogram_details(SHAPE, 12, config, seed=4, keep_density=True)


def test_every_kind_is_there_and_its_truth_row_holds_its_matter(cluttered):
    config, result = cluttered
    clutter = result.clutter
    assert list(clutter.columns) == list(CLUTTER_COLUMNS)
    assert set(clutter["kind"]) == set(CLUTTER_KINDS)
    density = result.density
    for j, row in clutter.reset_index(drop=True).iterrows():
        inside = clutter_mask(SHAPE, clutter.iloc[[j]])
        assert inside.any(), row["kind"]
        # the density over the object's matter is that of the object (bilayers: two thin
        # leaflets across the bilayer's 4.7 voxels; microtubules: the wall around the lumen)
        assert density[inside].mean() > 0.3 * row["density"], row["kind"]
    # away from clutter and particles the density is the solvent's: 0
    empty = ~clutter_mask(SHAPE, clutter, margin=10)  # ice blobs' soft edges reach far
    zyx = particle_zyx(result.particles)
    for c in np.round(zyx).astype(int):
        lo = np.maximum(c - 10, 0)
        empty[lo[0] : c[0] + 11, lo[1] : c[1] + 11, lo[2] : c[2] + 11] = False
    assert empty.sum() > 0.03 * empty.size
    assert np.abs(density[empty]).max() < 0.02


def test_gold_is_several_times_denser_than_protein_and_darkest_in_the_tomogram(cluttered):
    config, result = cluttered
    gold = result.clutter[result.clutter["kind"] == "gold"]
    assert len(gold) >= 5
    centres = np.round(gold[["z", "y", "x"]].to_numpy()).astype(int)
    # the particles' densest voxels (protein = 1 fills a voxel)
    particles = result.density[~clutter_mask(SHAPE, result.clutter, margin=4)].max()
    assert 0.5 < particles < 1.5
    bead = result.density[tuple(centres.T)]
    assert np.all(bead > 3 * particles), (bead, particles)
    # after CTF, wedge and band limit (noise-free) a bead holds the strongest contrast in
    # the tomogram (dark; beads over ~70 Å get a bright centre from the uncorrected CTF)
    strongest = np.percentile(np.abs(result.volume), 99.5)
    inside = np.all((centres >= 3) & (centres < np.array(SHAPE) - 3), axis=1)
    assert inside.sum() >= 3
    for c in centres[inside]:
        box = result.volume[c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3, c[2] - 2 : c[2] + 3]
        assert box.min() < -strongest, (box.min(), strongest)


def test_membranes_are_bilayers_two_leaflets_about_4_nm_apart():
    config = SimulationConfig(
        n_classes=2, snr=None, voxel_size=5.0, **{**NONE, "vesicles_per_um2": 1000.0}
    )
    result = simulate_tomogram_details((48, 128, 128), 2, config, seed=2, keep_density=True)
    vesicles = result.clutter[result.clutter["kind"] == "vesicle"]
    assert len(vesicles) >= 2
    row = vesicles.iloc[0]
    z, y, x = np.indices(result.density.shape, dtype=float)
    s = np.sqrt((z - row["z"]) ** 2 + (y - row["y"]) ** 2 + (x - row["x"]) ** 2) - row["radius"]
    others = clutter_mask(result.density.shape, vesicles.iloc[1:], margin=2)
    near = (np.abs(s) < 8) & ~others
    # the radial profile across the bilayer in bins of 1 Å: peaks near ±19 Å, a dip at 0
    bins = np.round(s[near] * config.voxel_size).astype(int)
    profile = np.bincount(bins + 40, weights=result.density[near]) / np.maximum(
        np.bincount(bins + 40), 1
    )
    angstrom = np.arange(len(profile)) - 40
    inner = profile[(angstrom > -30) & (angstrom < 0)]
    outer = profile[(angstrom > 0) & (angstrom < 30)]
    peaks = (
        angstrom[(angstrom > -30) & (angstrom < 0)][inner.argmax()],
        angstrom[(angstrom > 0) & (angstrom < 30)][outer.argmax()],
    )
    assert -24 <= peaks[0] <= -14 and 14 <= peaks[1] <= 24, peaks
    middle = profile[np.abs(angstrom) <= 2].mean()
    assert inner.max() > 4 * middle and outer.max() > 4 * middle
    assert 0.5 < inner.max() < 1.5 and 0.5 < outer.max() < 1.5  # headgroups ~ protein


def test_microtubules_are_hollow_and_actin_is_solid(cluttered):
    _, result = cluttered
    shape = np.array(SHAPE)
    checked = {"actin": 0, "microtubule": 0}
    for _, row in result.clutter[result.clutter["kind"].isin(checked)].iterrows():
        centre = np.array([row["z"], row["y"], row["x"]])
        axis = np.array([row["dz"], row["dy"], row["dx"]])
        across = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        across /= np.linalg.norm(across)
        wall = centre + across * (row["radius"] + row["inner_radius"]) / 2
        points = np.round([centre, wall]).astype(int)
        if np.any(points < 0) or np.any(points >= shape):
            continue
        axis_value, wall_value = result.density[tuple(points.T)]
        if row["kind"] == "microtubule":
            assert axis_value < 0.1 * row["density"] < wall_value
        else:
            assert axis_value > 0.5 * row["density"]
        checked[row["kind"]] += 1
    assert checked["actin"] and checked["microtubule"], checked


def test_particles_avoid_the_clutter(cluttered):
    config, result = cluttered
    zyx = particle_zyx(result.particles)
    assert len(zyx) == 12
    distances = clutter_distance(result.clutter, zyx)
    assert distances.shape == (12, len(result.clutter))
    # at least tomogram_gap × the smallest bounding radius from any clutter's matter
    assert distances.min() >= config.tomogram_gap * 0.3 * config.particle_diameter_px
    assert np.all(match_clutter(result.clutter, zyx) == -1)


def test_match_clutter_finds_picks_on_junk(cluttered):
    _, result = cluttered
    clutter = result.clutter.reset_index(drop=True)
    gold = clutter.index[clutter["kind"] == "gold"].to_numpy()
    picks = clutter.loc[gold, ["z", "y", "x"]].to_numpy() + [0.0, 1.0, 0.0]
    np.testing.assert_array_equal(match_clutter(clutter, picks), gold)
    # a pick a few voxels beside a bead counts with a margin of that much, not without
    beside = clutter.loc[gold[:1], ["z", "y", "x"]].to_numpy() + [
        0.0,
        clutter.loc[gold[0], "radius"] + 3.0,
        0.0,
    ]
    assert match_clutter(clutter.loc[gold[:1]], beside)[0] == -1
    assert match_clutter(clutter.loc[gold[:1]], beside, margin=3.5)[0] == 0
    # inside a vesicle's lumen is not on the vesicle
    vesicle = clutter[clutter["kind"] == "vesicle"].iloc[:1]
    assert match_clutter(vesicle, vesicle[["z", "y", "x"]].to_numpy())[0] == -1
    # no clutter: nothing is junk
    assert np.all(match_clutter(clutter.iloc[:0], picks) == -1)
    # the mask agrees with the distance test voxel by voxel
    mask = clutter_mask(SHAPE, clutter)
    grid = np.argwhere(np.ones(SHAPE, bool))[::97]
    np.testing.assert_array_equal(mask[tuple(grid.T)], match_clutter(clutter, grid) >= 0)


def test_the_switch_turns_clutter_off_and_without_it_nothing_changes():
    on = SimulationConfig(n_classes=3, snr=0.1, **MANY)
    off = dataclasses.replace(on, clutter=False)
    empty = dataclasses.replace(on, carbon_edge=False, **NONE)
    with_clutter = simulate_tomogram_details(SHAPE, 12, on, seed=5)
    without = simulate_tomogram_details(SHAPE, 12, off, seed=5)
    assert len(with_clutter.clutter) > 10
    assert len(without.clutter) == 0 and list(without.clutter.columns) == list(CLUTTER_COLUMNS)
    assert not np.array_equal(with_clutter.volume, without.volume)
    # amounts of zero are the same as the switch off, particles and noise alike
    nothing = simulate_tomogram_details(SHAPE, 12, empty, seed=5)
    assert len(nothing.clutter) == 0
    np.testing.assert_array_equal(nothing.volume, without.volume)
    volume, table = simulate_tomogram(SHAPE, 12, off, seed=5)
    np.testing.assert_array_equal(volume, without.volume)
    # subtomogram sets never hold clutter
    a, la = simulate_subtomograms(2, dataclasses.replace(on, box_size=24), seed=1)
    b, lb = simulate_subtomograms(2, dataclasses.replace(off, box_size=24), seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_amounts_are_respected_per_field_of_view():
    amounts = dict(
        gold_per_um2=400.0,
        vesicles_per_um2=100.0,
        membranes_per_um2=50.0,
        ice_per_um2=70.0,
        actin_per_um2=250.0,
        microtubules_per_um2=30.0,
    )
    fields = {
        "gold": "gold_per_um2",
        "vesicle": "vesicles_per_um2",
        "membrane": "membranes_per_um2",
        "ice": "ice_per_um2",
        "actin": "actin_per_um2",
        "microtubule": "microtubules_per_um2",
    }
    for seed in range(3):
        config = SimulationConfig(n_classes=2, snr=None, **amounts)
        clutter = simulate_tomogram_details(SHAPE, 4, config, seed=seed).clutter
        counts = clutter["kind"].value_counts()
        for kind, field in fields.items():
            expected = amounts[field] * AREA_UM2
            assert abs(counts.get(kind, 0) - expected) < 1, (kind, counts.get(kind, 0), expected)
        assert "carbon" not in counts  # off by default
        # one kind's amount never moves the others
        fewer = dataclasses.replace(config, gold_per_um2=0.0)
        rest = simulate_tomogram_details(SHAPE, 4, fewer, seed=seed).clutter
        assert "gold" not in set(rest["kind"])
        np.testing.assert_array_equal(
            rest.to_numpy(), clutter[clutter["kind"] != "gold"].to_numpy()
        )
    # physical sizes follow the voxel size
    coarse = SimulationConfig(
        n_classes=2, snr=None, voxel_size=20.0, **{**NONE, "gold_per_um2": 2000.0}
    )
    gold = simulate_tomogram_details((24, 64, 64), 2, coarse, seed=0).clutter
    assert len(gold) and np.all((gold["radius"] >= 1.25) & (gold["radius"] <= 2.5))
    with pytest.raises(InputError, match="gold_per_um2"):
        SimulationConfig(gold_per_um2=-1.0)


def test_same_seed_same_clutter():
    config = SimulationConfig(n_classes=3, snr=0.1, **MANY)
    a = simulate_tomogram_details(SHAPE, 6, config, seed=9)
    b = simulate_tomogram_details(SHAPE, 6, config, seed=9)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.clutter.to_numpy(), b.clutter.to_numpy())
    c = simulate_tomogram_details(SHAPE, 6, config, seed=10)
    assert not np.array_equal(
        a.clutter[["x", "y", "z"]].to_numpy()[:3], c.clutter[["x", "y", "z"]].to_numpy()[:3]
    )


def test_cryossl_simulate_writes_the_clutter_table(tmp_path):
    from napari_cryossl.cli import main
    from napari_cryossl.io import read_particles

    argv = [
        "simulate",
        "--per-class", "0",
        "--classes", "3",
        "--snr", "inf",
        "--tomogram-shape", *map(str, SHAPE),
        "--tomogram-particles", "10",
        "--gold", "400",
        "--vesicles", "120",
        "--microtubules", "120",
        "--carbon-edge",
        "--seed", "3",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "on")]) == 0
    clutter = read_clutter(tmp_path / "on" / "clutter.csv")
    config = SimulationConfig(
        n_classes=3,
        snr=None,
        gold_per_um2=400.0,
        vesicles_per_um2=120.0,
        microtubules_per_um2=120.0,
        carbon_edge=True,
    )
    expected = simulate_tomogram_details(SHAPE, 10, config, seed=3)
    assert set(clutter["kind"]) == set(expected.clutter["kind"]) >= {"gold", "vesicle", "carbon"}
    np.testing.assert_array_equal(clutter["kind"], expected.clutter["kind"])
    numbers = [c for c in CLUTTER_COLUMNS if c != "kind"]
    np.testing.assert_allclose(clutter[numbers], expected.clutter[numbers], atol=1e-4)
    # the same voxels as the particle truth written beside it
    particles = read_particles(tmp_path / "on" / "tomogram_particles.star")
    np.testing.assert_allclose(particle_zyx(particles), particle_zyx(expected.particles), atol=1e-3)
    assert np.all(match_clutter(clutter, particle_zyx(particles)) == -1)

    assert main([*argv, "--no-clutter", "--out", str(tmp_path / "off")]) == 0
    assert not (tmp_path / "off" / "clutter.csv").exists()
    assert (tmp_path / "off" / "tomogram.mrc").is_file()
    with pytest.raises(InputError, match="not a clutter table"):
        read_clutter(tmp_path / "on" / "tomogram_particles.star")
