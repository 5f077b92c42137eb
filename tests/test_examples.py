"""examples/: the worked examples run as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_cryossl.cli import main
from napari_cryossl.io import read_particles

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_example_predicts_every_tomogram_through_submitit(tmp_path):
    """The SLURM job-array example, run with submitit's local executor (the same jobs as
    processes): one prediction file per particle file, rows in the input order."""
    pytest.importorskip("submitit")
    files = []
    for seed in (1, 2):
        sim = tmp_path / f"tomo{seed}"
        assert main(["simulate", "--out", str(sim), "--classes", "2", "--per-class", "4",
                     "--box-size", "16", "--voxel-size", "20", "--snr", "1", "--seed",
                     str(seed)]) == 0
        files.append(sim / "particles.star")
    classifier = tmp_path / "classifier.pt"
    assert main(["finetune", str(files[0]), "--out", str(classifier), "--epochs", "1",
                 "--min-steps", "2", "--device", "cpu", "--batch-size", "4"]) == 0
    out = tmp_path / "predictions"
    example = _load("slurm_predict")
    code = example.main([str(classifier), *map(str, files), "--out", str(out),
                         "--executor", "local", "--time", "10", "--", "--device", "cpu"])
    assert code == 0
    for path in files:
        predicted = read_particles(out / f"{path.stem}_predictions.star")
        source = read_particles(path)
        assert len(predicted) == len(source)
        assert set(np.unique(predicted["class_number"])) <= {1, 2}
    assert (out / "logs").is_dir()  # submitit's logs, one folder for the array


def test_slurm_pick_example_picks_every_tomogram_with_a_learned_picker(tmp_path):
    """The learned picker's job array (submitit's local executor): one picks file per
    tomogram, each pick with its class and score."""
    pytest.importorskip("submitit")
    from napari_cryossl.io import write_mrc, write_particles
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(n_classes=2, box_size=16, voxel_size=10, snr=1.0,
                              particle_diameter_a=120)
    tomograms = []
    for seed in (1, 2):
        volume, table = simulate_tomogram((32, 48, 48), 8, config, seed=seed)
        tomograms.append(tmp_path / f"tomo{seed}.mrc")
        write_mrc(tomograms[-1], volume, 10)
    star = tmp_path / "clicks.star"
    write_particles(table.assign(tomo_name="tomo2.mrc"), star, voxel_size=10)
    picker = tmp_path / "picker.pt"
    assert main(["train-picker", str(star), "--tomogram", str(tomograms[1]), "--out",
                 str(picker), "--steps", "3", "--diameter", "120"]) == 0
    out = tmp_path / "picks"
    example = _load("slurm_pick")
    code = example.main([str(picker), *map(str, tomograms), "--out", str(out),
                         "--executor", "local", "--time", "10", "--", "--threshold", "0"])
    assert code == 0
    for tomo in tomograms:
        picks = read_particles(out / f"{tomo.stem}_picks.star", voxel_size=10,
                               tomogram_shape=(32, 48, 48))
        assert len(picks) > 0 and set(picks["class_number"]) <= {1, 2}
