"""Every long operation yields the one `status.Progress` type, returns its result, and
stops between steps when closed (what Cancel and Ctrl-C do), writing no output."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl import ops
from napari_cryossl.base.status import Progress
from napari_cryossl.io import write_mrc, write_particles
from napari_cryossl.ops.embed import embed
from napari_cryossl.ops.gradcam import gradcam
from napari_cryossl.ops.pick import pick
from napari_cryossl.ops.predict import predict
from napari_cryossl.ops.simulate import simulate
from napari_cryossl.ops.train import finetune, pretrain
from napari_cryossl.simulate import SimulationConfig, simulate_tomogram
from napari_cryossl.train import FinetuneConfig, PretrainConfig


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small tomogram, its particles (labelled) and a classifier trained on them."""
    folder = tmp_path_factory.mktemp("ops")
    config = SimulationConfig(n_classes=2, box_size=16, snr=1.0, clutter=False)
    volume, truth = simulate_tomogram((32, 96, 96), 12, config, seed=1)
    tomogram = folder / "tomo.mrc"
    write_mrc(tomogram, volume, config.voxel_size)
    truth["tomo_name"] = tomogram.name
    particles = folder / "particles.star"
    write_particles(truth, particles, voxel_size=config.voxel_size)
    classifier = folder / "classifier.pt"
    ops.run(finetune(particles, FinetuneConfig(epochs=1, batch_size=4, device="cpu"),
                     classifier, box_size=16))
    return {"folder": folder, "tomogram": tomogram, "particles": particles,
            "classifier": classifier}


def _operations(p, out):
    cpu = {"device": "cpu"}
    return {
        "pick": pick(p["tomogram"], diameter_px=8, out=out / "picks.star"),
        "simulate": simulate(out / "sim", SimulationConfig(n_classes=2, box_size=16),
                             n_per_class=64),
        "pretrain": pretrain(p["particles"], PretrainConfig(epochs=3, batch_size=4, **cpu),
                             out / "encoder.pt", box_size=16),
        "finetune": finetune(p["particles"], FinetuneConfig(epochs=3, batch_size=4, **cpu),
                             out / "classifier.pt", box_size=16),
        "predict": predict(p["classifier"], p["particles"], out=out / "predicted.star"),
        "gradcam": gradcam(p["classifier"], p["particles"], out / "heat"),
        "embed": embed(p["classifier"], p["particles"], out=out / "map.star"),
    }


@pytest.mark.parametrize(
    "name", ["pick", "simulate", "pretrain", "finetune", "predict", "gradcam", "embed"]
)
def test_an_operation_yields_progress_and_stops_when_closed(project, tmp_path, name):
    operation = _operations(project, tmp_path)[name]
    first = next(operation)
    assert isinstance(first, Progress) and first.n_steps >= 1 and first.stage
    operation.close()
    # nothing half-made under the final names
    for final in ("picks.star", "encoder.pt", "classifier.pt", "predicted.star", "map.star"):
        assert not (tmp_path / final).exists()
    assert not (tmp_path / "sim" / "tomogram.mrc").exists()


def test_operations_return_their_results(project, tmp_path):
    seen: list = []
    picked = ops.run(pick(project["tomogram"], diameter_px=8, out=tmp_path / "picks.star"),
                     seen.append)
    assert len(picked.table) > 0 and (tmp_path / "picks.star").is_file()
    assert seen and all(isinstance(s, Progress) and s.stage == "pick" for s in seen)
    assert seen[-1].step == seen[-1].n_steps
    out = ops.run(predict(project["classifier"], project["particles"]))
    assert len(out.predictions.class_numbers) == 12
    result = ops.run(embed(project["classifier"], project["particles"]))
    assert result.embeddings.shape[0] == 12 and np.isfinite(result.coords).all()
