"""The non-contrastive objectives (SimSiam, BYOL): their losses against direct
computations, the target network, learning on a tiny set without collapsing, and the
command line from `pretrain --method` to `finetune --init`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryossl.nn.models import build_encoder
from napari_cryossl.nn.ssl import BYOL, SSL_DEFAULTS, SimSiam, build_ssl, embedding_std
from test_ssl import BOX, small_encoder, views  # the contrastive methods' test pieces

torch.set_num_threads(1)
METHODS = ("simsiam", "byol")


def negative_cosine(a, b):
    """-mean_i <a_i, b_i> / (|a_i| |b_i|), one row at a time."""
    return -torch.stack([a[i] @ b[i] / (a[i].norm() * b[i].norm()) for i in range(len(a))]).mean()


# ---------------------------------------------------------------- the losses


@pytest.mark.parametrize("n", [2, 5])
def test_simsiam_loss_is_the_symmetrised_negative_cosine_with_a_stop_gradient(n):
    obj = build_ssl("simsiam", small_encoder())
    assert isinstance(obj, SimSiam)
    v1, v2 = views(n)
    loss = obj(v1, v2)
    with torch.no_grad():
        z1, z2 = obj.project(v1), obj.project(v2)
        p1, p2 = obj.prediction_head(z1), obj.prediction_head(z2)
    expected = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert -1.0 <= float(loss.detach()) <= 1.0

    # the stop-gradient: the encoder's gradient is that of the loss with z detached
    def encoder_grad(loss_fn):
        obj.zero_grad()
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in obj.encoder.parameters()])

    def by_hand(stop):
        z1, z2 = obj.project(v1), obj.project(v2)
        p1, p2 = obj.prediction_head(z1), obj.prediction_head(z2)
        cut = (lambda z: z.detach()) if stop else (lambda z: z)
        return 0.5 * (negative_cosine(p1, cut(z2)) + negative_cosine(p2, cut(z1)))

    grad = encoder_grad(lambda: obj(v1, v2))
    torch.testing.assert_close(grad, encoder_grad(lambda: by_hand(True)), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grad, encoder_grad(lambda: by_hand(False)), rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("n", [2, 4])
def test_byol_loss_compares_online_predictions_with_target_projections(n):
    obj = build_ssl("byol", small_encoder())
    assert isinstance(obj, BYOL)
    v1, v2 = views(n, seed=1)
    loss = obj(v1, v2)
    with torch.no_grad():
        p1 = obj.prediction_head(obj.project(v1))
        p2 = obj.prediction_head(obj.project(v2))
        t1, t2 = obj.project_target(v1), obj.project_target(v2)
    expected = 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_byol_target_is_an_ema_without_gradients_that_approaches_one():
    m = 0.9
    obj = build_ssl("byol", small_encoder(), momentum=m, momentum_schedule="fixed")
    target = [*obj.target_encoder.parameters(), *obj.target_projection_head.parameters()]
    online = [*obj.encoder.parameters(), *obj.projection_head.parameters()]
    assert all(not p.requires_grad for p in target)
    for pt, po in zip(target, online, strict=True):
        assert torch.equal(pt, po), "the target starts as a copy of the online network"
    opt = obj.configure_optimizer()
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised.isdisjoint({id(p) for p in target})
    assert {id(p) for p in obj.prediction_head.parameters()} <= optimised
    obj(*views(4)).backward()
    assert all(p.grad is None for p in target)
    old = [p.detach().clone() for p in target]
    opt.step()
    obj.after_optimizer_step(0.5)
    for pt, before, po in zip(target, old, online, strict=True):
        torch.testing.assert_close(pt, m * before + (1 - m) * po.detach())
    cosine = build_ssl("byol", small_encoder())  # the default: 0.99 -> 1 along a cosine
    assert cosine.current_momentum() == pytest.approx(0.99)
    cosine.after_optimizer_step(0.5)
    assert cosine.current_momentum() == pytest.approx(0.995)
    cosine.after_optimizer_step(1.0)
    assert cosine.current_momentum() == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_noncontrastive_methods_need_two_particles_and_equal_views(method):
    obj = build_ssl(method, small_encoder())
    v1, v2 = views(2)
    with pytest.raises(ValueError, match="at least 2"):
        obj(v1[:1], v2[:1])
    with pytest.raises(ValueError, match="same shape"):
        obj(v1, v2[:1])
    with pytest.raises(ValueError, match="queue_size"):
        build_ssl(method, small_encoder(), queue_size=8)


def test_embedding_std_is_zero_for_a_collapsed_representation():
    collapsed = torch.ones(8, 16) * torch.linspace(1, 2, 16)
    assert embedding_std(collapsed + 1e-7 * torch.randn(8, 16)) < 1e-5
    spread = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    assert embedding_std(spread) == pytest.approx(64**-0.5, rel=0.02)
    with pytest.raises(ValueError, match="N >= 2"):
        embedding_std(torch.ones(1, 4))


def test_the_methods_are_offered_wherever_pretraining_is():
    from napari_cryossl.base.options import SSL_METHODS, describe
    from napari_cryossl.cli import build_parser
    from napari_cryossl.train import PretrainConfig

    choices = describe(PretrainConfig, "method").choices
    parser = build_parser()
    for method in METHODS:
        assert method in SSL_DEFAULTS and method in SSL_METHODS and method in choices
        args = parser.parse_args(["pretrain", "p.star", "--method", method, "--out", "e.pt"])
        assert args.method == method
        assert PretrainConfig(method=method).hyperparameters()["lr"] == SSL_DEFAULTS[method]["lr"]


# ---------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def tiny_set():
    """48 clean synthetic shapes of 3 classes, 16^3 (what the other learning tests use)."""
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import clean_shapes_config, simulate_subtomograms

    config = clean_shapes_config(n_classes=3, box_size=BOX)
    volumes, _labels = simulate_subtomograms(16, config, seed=0)
    return volumes, SubtomogramSet.from_arrays(volumes, None, voxel_size=20.0)


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_and_the_representation_does_not_collapse_on_a_tiny_set(method, tiny_set):
    """30 steps (10 epochs of 3 batches of 16) of the method's defaults and the default
    views. Measured 2026-12-08 (2-core CPU, seeds 0 and 1): SimSiam's epoch loss -0.01 ->
    -0.51 / -0.49, the std of its L2-normalised projections 0.052 / 0.055 after training
    (0.016 / 0.020 at random weights; 1/sqrt(256) = 0.0625 when spread); BYOL -0.19 ->
    -0.59 / -0.62, std 0.066 / 0.068 (0.028 / 0.031; 1/sqrt(128) = 0.088). Bars: the loss
    falls by at least 0.1 and the std stays above half of 1/sqrt(D)."""
    from napari_cryossl.train import PretrainConfig, iter_pretrain

    volumes, data = tiny_set
    config = PretrainConfig(method=method, epochs=10, batch_size=16, device="cpu", seed=0)
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "encoder.pt"
        config = PretrainConfig(**{**config.__dict__, "keep_state": True})
        for status in iter_pretrain(data, config, out):
            if status.event == "epoch":
                losses[status.epoch] = status.loss
        state = torch.load(Path(tmp) / "encoder.last.pt", weights_only=True)
    assert state["method"] == method
    assert losses[10] < losses[1] - 0.1, losses
    torch.manual_seed(0)
    # the encoder as trained (with the default centring's references)
    centring = state["architecture"]["centring"]
    objective = build_ssl(method, build_encoder("rb3d-small", BOX, centring=centring))
    model = {f"encoder.{k}": v for k, v in state["model"].items()}
    objective.load_state_dict({**model, **state["ssl_state"]})
    objective.eval()
    x = torch.from_numpy(np.asarray(volumes, np.float32)).reshape(len(volumes), 1, BOX, BOX, BOX)
    with torch.no_grad():
        z = objective.project(x)
    std = embedding_std(z)
    assert std > 0.5 * z.shape[1] ** -0.5, std


def test_cli_pretrain_simsiam_writes_an_encoder_that_finetune_init_accepts(tmp_path):
    from napari_cryossl.cli import main
    from napari_cryossl.nn.checkpoints import load_checkpoint

    sim = tmp_path / "sim"
    assert (
        main(
            ["simulate", "--out", str(sim), "--classes", "3", "--per-class", "6"]
            + ["--box-size", "16", "--snr", "1.0", "--seed", "3"]
        )
        == 0
    )
    particles = sim / "particles.star"
    encoder, classifier = tmp_path / "encoder.pt", tmp_path / "classifier.pt"
    common = ["--preset", "rb3d-small", "--device", "cpu", "--batch-size", "8"]
    assert (
        main(
            ["pretrain", str(particles), "--method", "simsiam", "--out", str(encoder)]
            + ["--epochs", "1", *common]
        )
        == 0
    )
    assert load_checkpoint(encoder)["method"] == "simsiam"
    assert (
        main(
            ["finetune", str(particles), "--init", str(encoder), "--out", str(classifier)]
            + ["--epochs", "1", "--min-steps", "0", *common]
        )
        == 0
    )
    assert load_checkpoint(classifier)["kind"] == "classifier"
