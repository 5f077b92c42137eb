"""Real complexes: atomic models and maps to densities, the built-in set, the simulator."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_cryossl.cli import main
from napari_cryossl.io import InputError, read_particles, write_mrc
from napari_cryossl.simulate import (
    SimulationConfig,
    class_names,
    class_templates,
    simulate_subtomogram_details,
    simulate_tomogram,
)
from napari_cryossl.simulate import structures as S

DATA = Path(__file__).parent / "data"
ENOLASE = DATA / "3enl_atoms.pdb.gz"  # full-atom 3ENL (wwPDB, CC0), protein atoms only

# standard atomic weights, written out here so the check does not use gemmi's table
WEIGHTS = {"C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty disk cache and memory cache."""
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(S, "_MEMORY", type(S._MEMORY)())


def _pdb_atoms(path: Path) -> list[str]:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    return [ln[76:78].strip() for ln in lines if ln.startswith("ATOM")]


@pytest.mark.parametrize("voxel_size", [5.0, 10.0])
def test_model_density_integrates_to_the_atoms_mass(voxel_size):
    elements = _pdb_atoms(ENOLASE)
    mass = sum(WEIGHTS[e] for e in elements)
    assert len(elements) == 3289
    item = S.density_from_model(ENOLASE, voxel_size)
    integral = float(item.density.sum()) * voxel_size**3
    assert integral == pytest.approx(mass, rel=0.01)
    assert item.mass_da == pytest.approx(mass, rel=1e-4)
    # about 13.2 Da per non-hydrogen atom, as for any protein
    assert integral / len(elements) == pytest.approx(13.2, rel=0.03)
    # the centre of mass is the centre index, protein fills about 1 at its core
    d = item.density.astype(np.float64)
    com = np.array([(np.indices(d.shape)[i] * d).sum() / d.sum() for i in range(3)])
    np.testing.assert_allclose(com, np.array(d.shape) // 2, atol=0.05)
    assert 0.5 < d.max() / S.PROTEIN_DENSITY < 1.3


def test_resolution_blurs_and_keeps_mass():
    sharp = S.density_from_model(ENOLASE, 5.0, resolution=10.0)
    blurred = S.density_from_model(ENOLASE, 5.0, resolution=30.0)
    assert blurred.density.max() < 0.7 * sharp.density.max()
    assert blurred.density.sum() == pytest.approx(sharp.density.sum(), rel=0.01)
    assert blurred.radius_a(0.99) > sharp.radius_a(0.99)


def test_builtin_bead_model_matches_the_full_atom_model():
    beads = S.load_structure("enolase", 10.0)
    atoms = S.density_from_model(ENOLASE, 10.0)
    assert beads.mass_da == pytest.approx(atoms.mass_da, rel=0.03)
    n = min(beads.density.shape[0], atoms.density.shape[0])

    def crop(x):
        lo = (x.shape[0] - n) // 2
        return x[lo : lo + n, lo : lo + n, lo : lo + n].ravel()

    assert np.corrcoef(crop(beads.density), crop(atoms.density))[0, 1] > 0.99


def test_builtin_set_loads_and_spans_sizes():
    entries = S.builtin_structures()
    assert len(entries) == 10
    assert len({e.name for e in entries}) == 10 and len({e.pdb_id for e in entries}) == 10
    items = [S.load_structure(e.name, 10.0) for e in entries]
    masses = np.array([it.mass_kda for it in items])
    assert masses.max() >= 2 * masses.min()
    assert masses.max() > 1500 and masses.min() < 100  # ribosomes to a 43 kDa enzyme
    for it in items:
        # every one fits the paper's 32³ box at 10 Å
        assert 2 * it.radius_a(0.99) <= 320, it.name
        assert float(it.density.sum()) * 1000 == pytest.approx(it.mass_da, rel=0.01)
    assert S.resolve_structures("builtin") == [e.name for e in entries]
    assert S.resolve_structures(["4V5D", "enolase"]) == ["ribosome70S", "enolase"]


def test_cache_on_disk_and_in_memory(monkeypatch):
    first = S.load_structure("enolase", 8.0)
    files = list((S.cache_dir() / "densities").glob("enolase-*.npz"))
    assert len(files) == 1
    assert S.load_structure("enolase", 8.0) is first  # memory
    monkeypatch.setattr(S, "_MEMORY", type(S._MEMORY)())

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached on disk")

    monkeypatch.setattr(S, "density_from_model", fail)
    again = S.load_structure("enolase", 8.0)  # disk
    np.testing.assert_array_equal(again.density, first.density)
    assert again.mass_da == first.mass_da and again.name == "enolase"


def test_map_input_resampled_to_the_voxel_size(tmp_path):
    model = S.density_from_model(ENOLASE, 4.0, resolution=8.0)
    path = tmp_path / "enolase_map.mrc"
    write_mrc(path, model.density, 4.0)
    item = S.load_structure(path, 10.0, mass_kda=43.0)
    assert item.name == "enolase_map"
    assert float(item.density.sum()) * 1000 == pytest.approx(43000, rel=1e-3)
    reference = S.density_from_model(ENOLASE, 10.0)
    n = min(item.density.shape[0], reference.density.shape[0])

    def crop(x):
        lo = (x.shape[0] - n) // 2
        return x[lo : lo + n, lo : lo + n, lo : lo + n].ravel()

    assert np.corrcoef(crop(item.density), crop(reference.density))[0, 1] > 0.95
    # without a mass, it is estimated from the volume: the right order of magnitude
    estimated = S.density_from_map(path, 10.0)
    assert 15 < estimated.mass_kda < 130
    # gzipped maps too
    gz = tmp_path / "enolase_map.map.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert S.load_structure(gz, 10.0, mass_kda=43.0).density.shape == item.density.shape


def test_bad_files_are_named_in_the_error(tmp_path, capsys):
    garbage = tmp_path / "broken.pdb"
    garbage.write_text("this is not a PDB file\n")
    with pytest.raises(InputError, match="broken.pdb"):
        S.load_structure(garbage, 10.0)
    bad_map = tmp_path / "broken_map.mrc"
    bad_map.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="broken_map.mrc"):
        S.load_structure(bad_map, 10.0)
    with pytest.raises(InputError, match="notes.txt"):
        (tmp_path / "notes.txt").write_text("x")
        S.resolve_structures(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="missing.cif"):
        SimulationConfig(structures=[str(tmp_path / "missing.cif")], n_classes=1)
    with pytest.raises(InputError, match="chain"):
        S.density_from_model(ENOLASE, 10.0, chains=["Z"])
    out = tmp_path / "sim"
    code = main(["simulate", "--structures", str(garbage), "--per-class", "1", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.pdb" in err and len(err.strip().splitlines()) == 1


def test_structures_that_do_not_fit_the_box_are_refused():
    config = SimulationConfig(structures="builtin", n_classes=2, box_size=16, voxel_size=10.0)
    with pytest.raises(InputError, match="ribosome80S.*larger box_size"):
        class_templates(config)


def test_simulator_uses_real_densities():
    config = SimulationConfig(structures="builtin", n_classes=10, snr=None, n_neighbors=0)
    names = class_names(10, "builtin")
    assert names[0] == "ribosome80S" and names[-1] == "enolase"
    templates = class_templates(config)
    masses = np.array([S.load_structure(n, 5.0, resolution=20.0).mass_da for n in names])
    sums = templates.sum(axis=(1, 2, 3)) * S.PROTEIN_DENSITY * 1000
    np.testing.assert_allclose(sums, masses, rtol=0.03)
    # rotated copies keep their mass (interpolation is mass-preserving on average)
    small = SimulationConfig(
        structures="builtin",
        n_classes=10,
        snr=None,
        n_neighbors=0,
        apply_ctf=False,
        tilt_range_deg=90.0,
        lowpass_a=None,
        max_shift_px=0.0,
    )
    sim = simulate_subtomogram_details(2, small, seed=1)
    totals = -sim.volumes.sum(axis=(1, 2, 3))
    expected = templates.sum(axis=(1, 2, 3))[sim.class_numbers - 1]
    np.testing.assert_allclose(totals, expected, rtol=0.05)


def test_crowded_noisy_subtomograms_and_tomogram_have_the_requested_snr():
    config = SimulationConfig(structures="builtin", n_classes=4, snr=0.05)
    sim = simulate_subtomogram_details(8, config, seed=0)
    assert sim.volumes.shape == (32, 32, 32, 32)
    noise_var = sim.noise_std**2
    assert sim.signal_variance / noise_var == pytest.approx(0.05, rel=1e-6)
    assert sim.n_neighbors.mean() > 1
    volume, table = simulate_tomogram((48, 128, 128), 20, config, seed=0)
    assert volume.shape == (48, 128, 128) and len(table) == 20
    assert set(table["class_number"]) == {1, 2, 3, 4}


def test_cli_simulate_builtin(tmp_path):
    out = tmp_path / "sim"
    code = main(
        [
            "simulate",
            "--structures",
            "builtin",
            "--classes",
            "3",
            "--per-class",
            "2",
            "--box-size",
            "32",
            "--voxel-size",
            "10",
            "--snr",
            "inf",
            "--out",
            str(out),
            "--tomogram-shape",
            "48",
            "96",
            "96",
            "--tomogram-particles",
            "6",
        ]
    )
    assert code == 0
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["class_names"] == {"1": "ribosome80S", "2": "ribosome70S", "3": "TRiC"}
    assert meta["config"]["structures"] == "builtin" and meta["config"]["snr"] is None
    table = read_particles(out / "particles.star")
    assert len(table) == 6
    assert (out / "tomogram.mrc").is_file()


def test_cli_simulate_model_files_one_class_each(tmp_path):
    out = tmp_path / "sim"
    code = main(
        [
            "simulate",
            "--structures",
            str(ENOLASE),
            "enolase",
            "--per-class",
            "1",
            "--snr",
            "0.1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["class_names"] == {"1": "3enl_atoms", "2": "enolase"}


def test_sample_data_of_real_complexes(tmp_path):
    from napari_cryossl._sample_data import STRUCTURES_SAMPLE, ensure_sample_files

    paths = ensure_sample_files(tmp_path, kind="structures")
    table = read_particles(paths["ground_truth"])
    assert len(table) == 48 and set(table["class_number"]) == {1, 2, 3, 4}
    assert STRUCTURES_SAMPLE[0] == "ribosome70S"
    stamp = paths["tomogram"].stat().st_mtime_ns
    assert ensure_sample_files(tmp_path, kind="structures") == paths  # reused
    assert paths["tomogram"].stat().st_mtime_ns == stamp
    shapes = ensure_sample_files(tmp_path)  # the synthetic sample still works beside it
    assert shapes["tomogram"] != paths["tomogram"] and shapes["tomogram"].is_file()


def test_snr_reference_subtomogram_gives_every_box_its_own_snr():
    config = SimulationConfig(
        structures="builtin", n_classes=10, snr=0.05, snr_reference="subtomogram"
    )
    clean = simulate_subtomogram_details(2, replace(config, snr=None), seed=3)
    noisy = simulate_subtomogram_details(2, config, seed=3)
    np.testing.assert_array_equal(clean.class_numbers, noisy.class_numbers)
    noise = (noisy.volumes - clean.volumes).astype(np.float64)
    ratio = clean.volumes.var(axis=(1, 2, 3)) / noise.var(axis=(1, 2, 3))
    np.testing.assert_allclose(ratio, 0.05, rtol=1e-3)
    # with one noise level for the set, the small complexes have a far lower SNR
    shared = simulate_subtomogram_details(2, replace(config, snr_reference="set"), seed=3)
    noise = (shared.volumes - clean.volumes).astype(np.float64)
    ratio = clean.volumes.var(axis=(1, 2, 3)) / noise.var(axis=(1, 2, 3))
    assert ratio.min() < 0.025 and ratio.max() > 0.075


def test_chains_chosen_in_the_source_name():
    source = f"{ENOLASE}#A"
    assert S.resolve_structures([source]) == [f"{ENOLASE.resolve()}#A"]
    item = S.load_structure(source, 10.0)
    assert item.name == "3enl_atoms_A"
    assert item.mass_da == pytest.approx(S.density_from_model(ENOLASE, 10.0).mass_da)
    assert class_names(1, [source]) == ["3enl_atoms_A"]
    with pytest.raises(InputError, match="3enl_atoms.pdb.gz.*no chain"):
        S.load_structure(f"{ENOLASE}#Z", 10.0)
