"""Batched inference: same rows in the same order as a direct forward pass, from any source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from napari_cryossl.analysis.predict import Predictions, iter_predict, predict
from napari_cryossl.io import InputError, write_mrc
from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint
from napari_cryossl.nn.models import Classifier, build_encoder
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.train import TrainStatus

BOX = 16
CLASSES = [3, 4, 9]  # sparse, as after deleting classes in the GUI


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    # The narrow flatten layout: with He weights its outputs differ clearly between
    # particles (an untrained rb3d-small saturates on its unnormalised radial profiles).
    model = Classifier(build_encoder("rb3d", BOX, width=16, fc_dim=256), len(CLASSES))
    for module in model.modules():  # He init: outputs that differ clearly between particles
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path, classifier):
    path = tmp_path / "classifier.pt"
    state = checkpoint_state(
        classifier,
        voxel_size=10.0,
        class_numbers=CLASSES,
        class_names=["ribosome", "proteasome", "membrane"],
        method="finetune",
        epoch=3,
    )
    save_checkpoint(path, state)
    return path


def volumes(n=11, seed=0):
    return np.random.default_rng(seed).normal(size=(n, BOX, BOX, BOX)).astype(np.float32)


def reference(model, data):
    """Direct computation: one forward pass over all boxes, softmax, argmax."""
    x = torch.from_numpy(data.load(np.arange(len(data))))[:, None]
    with torch.no_grad():
        emb = model.encoder(x)
        prob = torch.softmax(model.head(emb), dim=1)
    return prob.numpy(), emb.numpy()


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_predictions_match_a_direct_forward_pass_in_input_order(classifier, checkpoint, batch_size):
    data = SubtomogramSet.from_arrays(volumes(), voxel_size=10.0)
    # float32 (amp off): the same arithmetic as the direct pass, up to rounding
    pred = predict(checkpoint, data, batch_size=batch_size, device="cpu", amp=False)
    prob, emb = reference(classifier, data)
    np.testing.assert_allclose(pred.probabilities, prob, atol=1e-5)
    np.testing.assert_allclose(pred.embeddings, emb, atol=1e-4, rtol=1e-4)
    assert pred.probabilities.dtype == np.float32 and pred.embeddings.shape == (11, 256)
    best = prob.argmax(1)
    assert pred.class_numbers.tolist() == [CLASSES[i] for i in best]
    assert pred.class_numbers.dtype == np.int64
    np.testing.assert_allclose(pred.confidence, prob.max(1), atol=1e-5)
    assert pred.classes.tolist() == CLASSES
    assert pred.class_names == ["ribosome", "proteasome", "membrane"]
    assert np.ptp(pred.probabilities[:, 0]) > 0.05  # rows differ, so the order is checked


def test_bfloat16_on_the_cpu_gives_the_float32_classes(monkeypatch, tmp_path):
    """Where the CPU has native bfloat16 the default (amp on) predicts in bfloat16; the
    classes and confidences must be those of float32 (forced on here, so the check runs
    on any CPU)."""
    monkeypatch.setenv("CRYOSSL_CPU_BF16", "1")
    torch.manual_seed(1)
    model = Classifier(build_encoder("rb3d-small", BOX), len(CLASSES))
    for module in model.modules():  # running statistics as after training
        if isinstance(module, torch.nn.BatchNorm3d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "small.pt"
    state = checkpoint_state(model.eval(), voxel_size=10.0, class_numbers=CLASSES, epoch=1)
    save_checkpoint(path, state)
    data = SubtomogramSet.from_arrays(volumes(64, seed=3), voxel_size=10.0)
    low = predict(path, data, device="cpu", tta=1)
    full = predict(path, data, device="cpu", tta=1, amp=False)
    assert np.ptp(full.probabilities[:, 0]) > 0.05  # the boxes give different answers
    agree = (low.class_numbers == full.class_numbers).mean()
    assert agree >= 0.9, agree
    np.testing.assert_allclose(low.probabilities, full.probabilities, atol=0.05)


def test_iter_predict_reports_progress_then_the_result(checkpoint):
    data = SubtomogramSet.from_arrays(volumes(10), voxel_size=10.0)
    items = list(iter_predict(checkpoint, data, batch_size=4, device="cpu"))
    statuses, result = items[:-1], items[-1]
    assert all(isinstance(s, TrainStatus) and s.stage == "predict" for s in statuses)
    assert [s.step for s in statuses] == [1, 2, 3] and statuses[-1].n_steps == 3
    assert statuses[-1].metrics["particles"] == 10
    assert isinstance(result, Predictions) and len(result) == 10


def test_subtomogram_files_with_loader_workers_give_the_same_predictions(tmp_path, checkpoint):
    boxes = volumes(7, seed=2)
    names = []
    for i, box in enumerate(boxes):
        write_mrc(tmp_path / f"sub_{i}.mrc", box, 10.0)
        names.append(f"sub_{i}.mrc")
    star = tmp_path / "particles.star"
    starfile.write({"particles": pd.DataFrame({"rlnImageName": names})}, star)
    from_files = SubtomogramSet.from_star(star)
    in_memory = SubtomogramSet.from_arrays(boxes, voxel_size=10.0)
    a = predict(checkpoint, from_files, batch_size=3, device="cpu", num_workers=2)
    b = predict(checkpoint, in_memory, batch_size=3, device="cpu")
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert a.class_numbers.tolist() == b.class_numbers.tolist()


def test_wrong_box_size_voxel_size_or_kind_is_refused_naming_the_file(tmp_path, checkpoint):
    other_box = SubtomogramSet.from_arrays(np.zeros((2, 20, 20, 20), np.float32), voxel_size=10.0)
    with pytest.raises(InputError, match="classifier.pt.*16\\^3.*20\\^3"):
        predict(checkpoint, other_box, device="cpu")
    other_voxel = SubtomogramSet.from_arrays(volumes(2), voxel_size=5.0)
    with pytest.raises(InputError, match="classifier.pt.*10 Å/voxel.*5 Å/voxel"):
        predict(checkpoint, other_voxel, device="cpu")
    assert len(predict(checkpoint, other_voxel, device="cpu", check_voxel_size=False)) == 2
    encoder_path = tmp_path / "encoder.pt"
    save_checkpoint(encoder_path, checkpoint_state(build_encoder("rb3d-small", BOX)))
    with pytest.raises(InputError, match="encoder.pt.*encoder checkpoint, expected a classifier"):
        predict(encoder_path, other_voxel, device="cpu")


def test_out_of_memory_halves_the_batch_and_still_returns_every_row(classifier):
    """No GPU here: a hook raising torch's CUDA OOM error for more than 2 particles
    stands in for a full GPU, so the halving path runs for real."""
    sizes = []

    def fail_when_large(_module, args):
        sizes.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")

    data = SubtomogramSet.from_arrays(volumes(9), voxel_size=10.0)
    handle = classifier.encoder.register_forward_pre_hook(fail_when_large)
    try:
        items = list(
            iter_predict(
                classifier, data, batch_size=8, device="cpu", class_numbers=CLASSES, amp=False
            )
        )
    finally:
        handle.remove()
    pred = items[-1]
    prob, _ = reference(classifier, data)
    np.testing.assert_allclose(pred.probabilities, prob, atol=1e-5)
    assert sizes[:3] == [8, 4, 2]  # halved twice, then kept small
    assert max(sizes[3:]) <= 2
    assert items[-2].metrics["batch_size"] == 2


def test_an_empty_set_gives_empty_predictions(checkpoint):
    data = SubtomogramSet.from_arrays(np.zeros((0, BOX, BOX, BOX), np.float32), voxel_size=10.0)
    pred = predict(checkpoint, data, device="cpu")
    assert pred.probabilities.shape == (0, 3) and pred.class_numbers.shape == (0,)
