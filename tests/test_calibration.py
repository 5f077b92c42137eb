"""Calibrated confidence (temperature scaling) and the "not a particle" class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryossl.analysis.predict import JUNK_CLASS_NAME, junk_class_number, predict
from napari_cryossl.analysis.saliency import gradcam
from napari_cryossl.nn.checkpoints import checkpoint_state, load_checkpoint, save_checkpoint
from napari_cryossl.nn.models import Classifier, build_encoder
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.train import FinetuneConfig, iter_finetune, run
from napari_cryossl.train.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    softmax,
)

BOX = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(n, temperature, *, n_classes=5, seed=0):
    """Logits whose labels are drawn from softmax(logits / temperature): the right T is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    p = softmax(logits, temperature)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    logits, labels = synthetic(4000, true_t)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.08)
    # the prior on log T does not matter with thousands of particles
    assert fit_temperature(logits, labels, prior_sigma=None) == pytest.approx(t, rel=0.01)


def test_the_prior_keeps_a_few_all_right_particles_from_driving_t_to_zero():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    labels = np.array([0, 1, 2])
    assert fit_temperature(logits, labels, prior_sigma=None) < 0.1  # the lower bound
    assert 0.2 < fit_temperature(logits, labels) < 1.0  # sharper, but not to certainty
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_ece_of_an_over_confident_classifier_drops_after_temperature_scaling():
    # labels follow softmax(logits / 2.0): the raw softmax is over-confident
    val_logits, val_labels = synthetic(1000, 2.0, seed=1)
    test_logits, test_labels = synthetic(3000, 2.0, seed=2)
    report = calibration_report(val_logits, val_labels)
    t = report["temperature"]
    assert t > 1.5 and report["ece_after"] < report["ece_before"]
    assert report["nll_after"] < report["nll_before"]
    before = expected_calibration_error(softmax(test_logits), test_labels)
    after = expected_calibration_error(softmax(test_logits, t), test_labels)
    assert before > 0.1 and after < 0.05 and after < before / 3
    # the arg-max, i.e. the predicted class, does not change
    assert (softmax(test_logits).argmax(1) == softmax(test_logits, t).argmax(1)).all()


def test_too_few_validation_particles_keep_t_1():
    """10 particles: the fitted T is reported, not used (docs/training.md: with 10 the
    fitted T made things worse far more often than better)."""
    logits, labels = synthetic(1000, 2.0, seed=3)
    few = calibration_report(logits[:10], labels[:10])
    assert few["temperature"] == 1.0 and not few["applied"] and few["n"] == 10
    assert few["fitted_temperature"] != 1.0 and "too few" in few["note"]
    assert few["ece_after"] == few["ece_before"]
    many = calibration_report(logits[:50], labels[:50])
    assert many["applied"] and many["temperature"] == many["fitted_temperature"] > 1.0
    assert "note" not in many


def test_ece_by_hand():
    # two bins: confidence 0.9 right twice and wrong once; confidence 0.6 wrong once
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 1])
    # bin of 0.9: accuracy 2/3, confidence 0.9 (3 of 4); bin of 0.6: accuracy 0, conf 0.6
    expected = 0.75 * abs(2 / 3 - 0.9) + 0.25 * 0.6
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    # the (confidence, right) form gives the same
    right = probs.argmax(1) == labels
    assert expected_calibration_error(probs.max(1), right) == pytest.approx(expected)


def random_set(n=30, seed=0):
    volumes = np.random.default_rng(seed).normal(size=(n, BOX, BOX, BOX)).astype(np.float32)
    labels = np.resize(np.array([1, 2, 3]), n)
    # class 2 a little brighter in the centre: something to learn, with mistakes left
    centre = slice(BOX // 2 - 3, BOX // 2 + 3)
    volumes[labels == 2, centre, centre, centre] += 0.8
    return SubtomogramSet.from_arrays(volumes, labels, voxel_size=10.0)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration") / "classifier.pt"
    config = FinetuneConfig(
        epochs=3, batch_size=8, device="cpu", min_steps=0, val_fraction=0.3, seed=0
    )
    last = run(iter_finetune(random_set(), config, out))
    return out, last


def test_finetune_stores_a_temperature_and_its_validation_ece(finetuned):
    out, last = finetuned
    state = load_checkpoint(out, kind="classifier")
    t = state["temperature"]
    assert isinstance(t, float) and 0.05 <= t <= 20.0
    calibration = state["calibration"]
    assert calibration["method"] == "temperature scaling"
    # a handful of validation particles: fitted, but T = 1 kept, and the reason stated
    assert t == 1.0 and not calibration["applied"] and "too few" in calibration["note"]
    assert last.metrics["calibration_note"] == calibration["note"]
    assert calibration["temperature"] == t and calibration["n"] == last.metrics["n_val"]
    assert calibration["n_bins"] == 15
    assert 0.0 <= calibration["ece_after"] <= 1.0 and 0.0 <= calibration["ece_before"] <= 1.0
    # the checkpoint's metrics and the last status carry it too (the CLI prints them)
    assert state["metrics"]["temperature"] == t
    assert state["metrics"]["val_ece_calibrated"] == calibration["ece_after"]
    assert last.metrics["temperature"] == t and "val_ece" in last.metrics


def test_with_enough_validation_particles_finetune_uses_the_fitted_temperature(
    tmp_path, monkeypatch
):
    from napari_cryossl.train import calibration

    monkeypatch.setattr(calibration, "MIN_PARTICLES", 5)  # this tiny run has 9
    config = FinetuneConfig(
        epochs=2, batch_size=8, device="cpu", min_steps=0, val_fraction=0.3, seed=0
    )
    run(iter_finetune(random_set(), config, tmp_path / "c.pt"))
    state = load_checkpoint(tmp_path / "c.pt")
    c = state["calibration"]
    assert c["applied"] and c["n"] >= 5 and "note" not in c
    assert state["temperature"] == c["fitted_temperature"] != 1.0
    assert c["nll_after"] <= c["nll_before"] + 1e-9


def test_predict_divides_the_logits_by_the_checkpoint_temperature(finetuned, tmp_path):
    out, _last = finetuned
    state = load_checkpoint(out, kind="classifier")
    data = random_set(12, seed=5)
    raw = predict(out, data, device="cpu", amp=False, tta=1, temperature=1.0)
    assert raw.temperature == 1.0
    for t in (state["temperature"], 2.0, 0.5):
        state["temperature"] = t
        path = tmp_path / f"t{t}.pt"
        save_checkpoint(path, state)
        scaled = predict(path, data, device="cpu", amp=False, tta=1)
        assert scaled.temperature == pytest.approx(t)
        # softmax(z / T) from softmax(z): log p = z - const
        expected = softmax(np.log(raw.probabilities.astype(np.float64)), t)
        np.testing.assert_allclose(scaled.probabilities, expected, atol=1e-4)
        assert (scaled.class_numbers == raw.class_numbers).all()
        if t > 1:  # softer: less confident
            assert (scaled.confidence <= raw.confidence + 1e-6).all()
            assert scaled.confidence.mean() < raw.confidence.mean() - 0.01
        elif t < 1:  # sharper: more confident
            assert (scaled.confidence >= raw.confidence - 1e-6).all()
    # an older checkpoint without a temperature: T = 1
    del state["temperature"]
    save_checkpoint(tmp_path / "old.pt", state)
    old = predict(tmp_path / "old.pt", data, device="cpu", amp=False, tta=1)
    assert old.temperature == 1.0
    np.testing.assert_allclose(old.probabilities, raw.probabilities, atol=1e-6)


def junk_classifier(tmp_path):
    """A 3-class classifier whose last class is "not a particle" and always wins."""
    torch.manual_seed(0)
    model = Classifier(build_encoder("rb3d", BOX, width=8, fc_dim=64), 3).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([0.0, 0.0, 1e4]))
    path = tmp_path / "junk.pt"
    names = ["ribosome", "proteasome", JUNK_CLASS_NAME]
    save_checkpoint(path, checkpoint_state(model, class_numbers=[1, 2, 7], class_names=names))
    return path


def test_junk_is_a_class_like_the_others_and_grad_cam_leaves_it_blank(tmp_path):
    path = junk_classifier(tmp_path)
    data = random_set(6, seed=3)
    pred = predict(path, data, device="cpu", amp=False, tta=1)
    assert pred.junk_class == 7 and pred.is_junk.all()
    assert (pred.class_numbers == 7).all()
    assert junk_class_number([1, 2], ["a", "b"]) is None
    assert junk_class_number([4, 9], ["a", " Not a particle "]) == 9
    boxes = data.load(np.arange(len(data)))
    assert np.abs(gradcam(path, boxes, device="cpu")).max() == 0.0  # predicted junk: blank
    assert gradcam(path, boxes, device="cpu", skip_junk=False).max() > 0
    # asked to explain the junk class explicitly: explained
    assert gradcam(path, boxes, device="cpu", target=7).max() > 0
