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
