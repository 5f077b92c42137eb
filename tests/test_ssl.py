"""Semantics of the MoCo, SimCLR and SwAV objectives against direct computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_cryossl.nn.models import build_encoder
from napari_cryossl.nn.ssl import SSL_DEFAULTS, MoCo, SimCLR, SwAV, build_ssl

torch.set_num_threads(1)
BOX = 16


def views(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, BOX, BOX, BOX, generator=g)
    return base + 0.1 * torch.randn(base.shape, generator=g), base


def small_encoder():
    torch.manual_seed(0)
    return build_encoder("rb3d-small", BOX, width=8, fc_dim=32)


def reference_infonce(q, k, negatives, tau):
    """-log softmax of the positive among [positive, negatives], averaged."""
    q, k, negatives = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(negatives, dim=1)
    losses = []
    for i in range(q.shape[0]):
        pos = torch.exp(q[i] @ k[i] / tau)
        neg = torch.exp(negatives @ q[i] / tau).sum()
        losses.append(-torch.log(pos / (pos + neg)))
    return torch.stack(losses).mean()


def reference_ntxent(z1, z2, tau):
    """SimCLR eq. (1): each of the 2N views against the 2N - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(torch.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[j] / tau) / denom)
    return total / (2 * n)


def reference_sinkhorn(scores, iterations, eps):
    """Sinkhorn-Knopp as in the SwAV paper: rows = prototypes, columns = samples."""
    q = torch.exp(scores / eps).T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


# ---------------------------------------------------------------- build_ssl


def test_unknown_method_and_hyperparameter_are_rejected():
    enc = small_encoder()
    with pytest.raises(ValueError, match=r"dino.*\['byol', 'moco', 'simclr', 'simsiam', 'swav'\]"):
        build_ssl("dino", enc)
    with pytest.raises(ValueError, match="queue_size"):
        build_ssl("simclr", enc, queue_size=10)


def test_defaults_follow_the_paper():
    moco = SSL_DEFAULTS["moco"]
    assert (moco["queue_size"], moco["momentum"], moco["temperature"]) == (128, 0.999, 0.2)
    assert (moco["lr"], moco["weight_decay"], moco["batch_size"], moco["epochs"]) == (
        1e-4,
        1e-4,
        16,
        200,
    )
    assert moco["optimizer"] == "adam" and moco["momentum_schedule"] == "fixed"
    swav = SSL_DEFAULTS["swav"]
    assert (swav["sinkhorn_iterations"], swav["sinkhorn_epsilon"], swav["temperature"]) == (
        3,
        0.05,
        0.1,
    )
    for method in SSL_DEFAULTS:
        obj = build_ssl(method.upper(), small_encoder())
        assert obj.method == method and obj.hparams["lr"] == SSL_DEFAULTS[method]["lr"]


# ---------------------------------------------------------------- MoCo


def test_moco_loss_uses_the_queue_before_enqueueing_current_keys():
    obj = build_ssl("moco", small_encoder(), queue_size=8)
    assert isinstance(obj, MoCo)
    v1, v2 = views(4)
    queue_before = obj.queue.clone()
    loss = obj(v1, v2)
    with torch.no_grad():
        q = obj.project(v1)
        k = obj.project_key(v2)
    expected = reference_infonce(q, k, queue_before, 0.2)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    # the current keys entered the queue afterwards, and were not negatives
    torch.testing.assert_close(obj.queue[:4], F.normalize(k, dim=1))
    torch.testing.assert_close(obj.queue[4:], queue_before[4:])
    with_own_keys = reference_infonce(q, k, obj.queue, 0.2)
    assert not torch.allclose(with_own_keys, expected)


def test_moco_queue_is_first_in_first_out():
    obj = build_ssl("moco", small_encoder(), queue_size=8)
    keys = []
    for step in range(3):
        v1, v2 = views(4, seed=step)
        obj(v1, v2)
        with torch.no_grad():
            keys.append(F.normalize(obj.project_key(v2), dim=1))
    # 8 slots, 4 keys per step: step 3 replaced the oldest keys (step 1)
    torch.testing.assert_close(obj.queue[:4], keys[2])
    torch.testing.assert_close(obj.queue[4:], keys[1])


def test_moco_evaluation_does_not_touch_the_queue():
    obj = build_ssl("moco", small_encoder(), queue_size=8)
    before = obj.queue.clone()
    with torch.no_grad():
        obj(*views(4))
    assert torch.equal(obj.queue, before)


def test_moco_key_encoder_is_an_ema_without_gradients():
    m = 0.9
    obj = build_ssl("moco", small_encoder(), momentum=m, queue_size=8)
    key_params = list(obj.key_encoder.parameters()) + list(obj.key_projection_head.parameters())
    query_params = list(obj.encoder.parameters()) + list(obj.projection_head.parameters())
    assert all(not p.requires_grad for p in key_params)
    for pk, pq in zip(key_params, query_params, strict=True):
        assert torch.equal(pk, pq), "the key encoder starts as a copy"
    opt = obj.configure_optimizer()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in query_params}

    loss = obj(*views(4))
    loss.backward()
    assert all(p.grad is None for p in key_params)
    old_keys = [p.detach().clone() for p in key_params]
    opt.step()
    obj.after_optimizer_step(0.5)
    moved = 0
    for pk, old, pq in zip(key_params, old_keys, query_params, strict=True):
        torch.testing.assert_close(pk, m * old + (1 - m) * pq.detach())
        moved += int(not torch.equal(pk, old))
    assert moved > 0


def test_moco_momentum_schedule():
    fixed = build_ssl("moco", small_encoder())
    fixed.after_optimizer_step(0.7)
    assert fixed.current_momentum() == 0.999
    cosine = build_ssl("moco", small_encoder(), momentum=0.99, momentum_schedule="cosine")
    assert cosine.current_momentum() == pytest.approx(0.99)
    cosine.after_optimizer_step(0.5)
    assert cosine.current_momentum() == pytest.approx(0.995)
    cosine.after_optimizer_step(1.0)
    assert cosine.current_momentum() == pytest.approx(1.0)
    cosine.after_optimizer_step(1.2)  # steps past the plan keep the final momentum
    assert cosine.progress == 1.0 and cosine.current_momentum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="momentum_schedule"):
        build_ssl("moco", small_encoder(), momentum_schedule="linear")


# ---------------------------------------------------------------- SimCLR


@pytest.mark.parametrize("n,tau", [(2, 0.5), (3, 0.1)])
def test_simclr_loss_matches_direct_ntxent(n, tau):
    obj = build_ssl("simclr", small_encoder(), temperature=tau)
    assert isinstance(obj, SimCLR)
    v1, v2 = views(n)
    loss = obj(v1, v2)
    with torch.no_grad():
        expected = reference_ntxent(obj.project(v1), obj.project(v2), tau)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_simclr_needs_two_samples_and_equal_views():
    obj = build_ssl("simclr", small_encoder())
    v1, v2 = views(2)
    with pytest.raises(ValueError, match="at least 2"):
        obj(v1[:1], v2[:1])
    with pytest.raises(ValueError, match="same shape"):
        obj(v1, v2[:1])


# ---------------------------------------------------------------- SwAV


def test_swav_codes_are_equipartitioned():
    obj = build_ssl("swav", small_encoder(), n_prototypes=4).eval()
    assert isinstance(obj, SwAV)
    x, _ = views(24)
    codes = obj.assign(x)
    assert codes.shape == (24, 4)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(24))
    per_prototype = codes.sum(dim=0)
    # 3 Sinkhorn iterations: balanced to within a few percent of 24 / 4 = 6
    torch.testing.assert_close(per_prototype, torch.full((4,), 6.0), rtol=0.05, atol=0)
    # the raw softmax of the scores is far from balanced
    raw = F.softmax(obj.scores(x) / 0.05, dim=1).sum(dim=0)
    assert (raw - 6).abs().max() > (per_prototype - 6).abs().max()


def test_swav_loss_matches_swapped_prediction_with_reference_sinkhorn():
    obj = build_ssl("swav", small_encoder(), n_prototypes=5)
    v1, v2 = views(6)
    loss = obj(v1, v2)
    with torch.no_grad():
        s1, s2 = obj.scores(v1), obj.scores(v2)
    q1, q2 = reference_sinkhorn(s1, 3, 0.05), reference_sinkhorn(s2, 3, 0.05)

    def cross_entropy(q, s):
        return -(q * F.log_softmax(s / 0.1, dim=1)).sum(dim=1).mean()

    expected = (cross_entropy(q1, s2) + cross_entropy(q2, s1)) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)


def test_swav_prototypes_frozen_first_epoch_and_normalised_after_steps():
    obj = build_ssl("swav", small_encoder(), n_prototypes=6, epochs=4)
    weights = obj.prototypes.heads[0].weight
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(6))
    opt = obj.configure_optimizer()
    assert any(p is weights for g in opt.param_groups for p in g["params"])

    obj(*views(4)).backward()
    assert obj.prototypes_frozen and weights.grad is None
    opt.step()
    opt.zero_grad()
    obj.after_optimizer_step(0.25)  # first of 4 epochs done
    assert not obj.prototypes_frozen
    before = weights.detach().clone()
    obj(*views(4, seed=1)).backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0
    opt.step()
    assert not math.isclose(float(weights.detach().norm(dim=1).max()), 1.0, abs_tol=1e-7)
    obj.after_optimizer_step(0.5)
    assert not torch.equal(weights, before)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(6))


# ---------------------------------------------------------------- all methods


@pytest.mark.parametrize("method", ["moco", "simclr", "swav"])
def test_training_step_reduces_loss_on_a_fixed_batch(method):
    obj = build_ssl(
        method, small_encoder(), lr=1e-3, **({"queue_size": 8} if method == "moco" else {})
    )
    opt = obj.configure_optimizer()
    v1, v2 = views(4)
    first = None
    for step in range(6):
        loss = obj(v1, v2)
        assert loss.ndim == 0 and torch.isfinite(loss)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_optimizer_step((step + 1) / 6)
    obj.eval()
    with torch.no_grad():
        assert obj.embed(v1).shape == (4, 32)
    if method != "moco":  # MoCo's negatives change as the queue fills
        obj.train()
        assert float(obj(v1, v2).detach()) < first
