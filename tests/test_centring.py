"""Centring boxed particles without labels (nn/centring.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl.nn.centring import (
    MIN_SEPARATION,
    centre_offsets,
    fit_references,
    roll_boxes,
    separation,
    shift_boxes,
)


def _ball_boxes(rng, n, box=24, radii=(3.0, 6.0), max_shift=3, noise=0.3):
    """Dark balls of two sizes, each off-centre by a known whole-voxel offset (within the
    default search sphere of 4 voxels)."""
    g = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    offsets = rng.integers(-max_shift, max_shift + 1, size=(4 * n, 3))
    offsets = offsets[np.linalg.norm(offsets, axis=1) <= 4.0][:n]
    boxes = np.empty((n, box, box, box), dtype=np.float32)
    for i, (t, rad) in enumerate(zip(offsets, np.resize(radii, n), strict=True)):
        d = np.sqrt((zz - t[0]) ** 2 + (yy - t[1]) ** 2 + (xx - t[2]) ** 2)
        boxes[i] = -1.0 / (1.0 + np.exp(d - rad)) + noise * rng.standard_normal(d.shape)
    return boxes, offsets


def test_centre_offsets_finds_where_particles_of_different_sizes_sit():
    rng = np.random.default_rng(0)
    boxes, truth = _ball_boxes(rng, 40)
    found = centre_offsets(boxes, n_references=2)
    assert found.shape == (40, 3)
    error = np.abs(found - truth).max(axis=1)
    assert np.mean(error == 0) >= 0.9, error
    # and the boxes it centres look alike: their mean is the two balls' average, centred
    centred = shift_boxes(boxes, -found)
    g = np.arange(boxes.shape[1]) - boxes.shape[1] // 2
    mass = -centred.mean(0)
    mass = np.clip(mass, 0, None)
    com = [float((mass.sum(axis=tuple(a for a in range(3) if a != ax)) * g).sum() / mass.sum())
           for ax in range(3)]
    assert np.allclose(com, 0.0, atol=0.3), com


def test_centring_simulated_complexes_brings_them_closer_to_the_box_centre():
    from napari_cryossl.simulate import SimulationConfig
    from napari_cryossl.simulate.subtomograms import simulate_subtomogram_details

    config = SimulationConfig(n_classes=3, box_size=32, voxel_size=10.0, snr=1.0,
                              max_shift_px=3.0, structures="builtin")
    sim = simulate_subtomogram_details(20, config, seed=1)
    found = centre_offsets(sim.volumes, n_references=3)
    before = np.linalg.norm(sim.shifts_zyx, axis=1)
    after = np.linalg.norm(found - sim.shifts_zyx, axis=1)
    assert np.median(after) < 0.6 * np.median(before), (np.median(after), np.median(before))


def test_shift_boxes_moves_content_by_whole_voxels_like_a_roll_and_back():
    rng = np.random.default_rng(2)
    boxes = rng.standard_normal((3, 16, 16, 16)).astype(np.float32)
    shifts = np.array([[1, 0, -2], [0, 3, 0], [-1, -1, 1]])
    moved = shift_boxes(boxes, shifts)
    for box, s, out in zip(boxes, shifts, moved, strict=True):
        np.testing.assert_allclose(out, np.roll(box, tuple(s), axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(shift_boxes(moved, -shifts), boxes, atol=1e-4)


def test_roll_boxes_moves_each_box_like_the_fourier_shift_and_passes_gradients():
    import torch

    x = torch.randn(5, 12, 12, 12, requires_grad=True)
    shifts = torch.tensor([[0, 0, 0], [1, -2, 3], [-4, 4, 0], [11, 0, -1], [2, 2, 2]])
    moved = roll_boxes(x, shifts)
    torch.testing.assert_close(moved, shift_boxes(x, shifts), atol=1e-5, rtol=1e-5)
    for i, s in enumerate(shifts.tolist()):
        torch.testing.assert_close(moved[i], torch.roll(x[i], s, dims=(0, 1, 2)))
    moved[1].sum().backward()
    assert x.grad[1].eq(1).all() and x.grad[0].eq(0).all()


def test_bright_particles_centre_like_dark_ones():
    rng = np.random.default_rng(3)
    boxes, truth = _ball_boxes(rng, 20)
    found = centre_offsets(-boxes, n_references=2)
    assert np.mean(np.abs(found - truth).max(axis=1) == 0) >= 0.9


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (np.zeros((16, 16, 16)), r"expected \(N, B, B, B\) boxes, got shape \(16, 16, 16\)"),
        (np.zeros((2, 16, 16, 12)), "expected"),
    ],
)
def test_bad_boxes_are_refused_by_name(boxes, message):
    with pytest.raises(ValueError, match=message):
        centre_offsets(boxes)


def test_no_boxes_no_offsets():
    assert centre_offsets(np.zeros((0, 16, 16, 16))).shape == (0, 3)


def test_separation_tells_boxes_with_particles_from_boxes_of_noise():
    rng = np.random.default_rng(5)
    boxes, _ = _ball_boxes(rng, 60, box=16, radii=(2.5, 4.0), max_shift=2)
    refs, _ = fit_references(boxes, 2, max_shift=2.0)
    assert separation(boxes, refs, max_shift=2.0) > 0.9
    noise = rng.standard_normal((60, 16, 16, 16)).astype(np.float32)
    refs, _ = fit_references(noise, 2, max_shift=2.0)
    assert abs(separation(noise, refs, max_shift=2.0) - 0.5) < MIN_SEPARATION - 0.5


# --------------------------------------------------------------- centring inside the network


def _centring_encoder(boxes, **kw):
    import torch

    from napari_cryossl.nn.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("rb3d-small", boxes.shape[1], centring=2, **kw).eval()
    return encoder


def test_an_encoder_with_centring_sees_a_shifted_particle_as_the_same_particle():
    import torch

    rng = np.random.default_rng(4)
    boxes, _ = _ball_boxes(rng, 24, box=24)
    near, _ = _ball_boxes(rng, 4, box=24, max_shift=1)  # moved by one voxel: still in reach
    encoder = _centring_encoder(boxes)
    x = torch.from_numpy(near)[:, None]
    moved = torch.roll(x, shifts=(1, -1, 0), dims=(2, 3, 4))
    with torch.no_grad():
        before_fit = (encoder(x) - encoder(moved)).abs().max()
        assert not encoder.input.centring.is_fitted
        encoder.input.centring.fit(boxes)
        a, b = encoder(x), encoder(moved)
    assert before_fit > 1e-3  # without references the shift changes the embedding
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fine_tuning_fits_the_references_once_and_the_checkpoint_keeps_them(tmp_path):
    import torch

    from napari_cryossl.analysis.predict import load_classifier, predict
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    rng = np.random.default_rng(5)
    boxes, _ = _ball_boxes(rng, 24, box=16, radii=(2.0, 4.0), max_shift=2)
    labels = np.resize([1, 2], 24)  # ball size is the class
    data = SubtomogramSet.from_arrays(boxes, labels, voxel_size=10.0)
    out = tmp_path / "clf.pt"
    config = FinetuneConfig(epochs=1, batch_size=8, device="cpu", min_steps=0,
                            encoder_options={"centring": 2})  # centre_particles: 10
    list(iter_finetune(data, config, out))
    model, _, _, _ = load_classifier(out)
    centring = model.encoder.input.centring
    assert centring.is_fitted
    assert torch.count_nonzero(centring.profiles) > 0
    predictions = predict(out, data, device="cpu")
    assert len(predictions.class_numbers) == 24
    # a second run from this classifier keeps its references rather than refitting
    again = tmp_path / "again.pt"
    list(iter_finetune(data, config, again, init=out))
    torch.testing.assert_close(load_classifier(again)[0].encoder.input.centring.profiles,
                               centring.profiles)


def test_grad_cam_of_a_centring_network_follows_the_particle():

    from napari_cryossl.analysis.saliency import gradcam
    from napari_cryossl.nn.models import Classifier

    rng = np.random.default_rng(6)
    boxes, _ = _ball_boxes(rng, 16, box=24)
    encoder = _centring_encoder(boxes)
    encoder.input.centring.fit(boxes)
    model = Classifier(encoder, 2).eval()
    x, _ = _ball_boxes(rng, 2, box=24, max_shift=1)
    moved = np.roll(x, shift=(1, 0, -1), axis=(1, 2, 3))
    maps = gradcam(model, x, target=1, device="cpu", amp=False, class_numbers=[1, 2])
    maps_moved = gradcam(model, moved, target=1, device="cpu", amp=False, class_numbers=[1, 2])
    np.testing.assert_allclose(maps_moved, np.roll(maps, shift=(1, 0, -1), axis=(1, 2, 3)),
                               atol=1e-3)


def test_fine_tuning_with_centring_from_an_encoder_without_it_says_so(tmp_path):
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.train import FinetuneConfig, PretrainConfig, iter_finetune, iter_pretrain

    rng = np.random.default_rng(7)
    boxes, _ = _ball_boxes(rng, 16, box=16, radii=(2.0, 4.0), max_shift=2)
    data = SubtomogramSet.from_arrays(boxes, np.resize([1, 2], 16), voxel_size=10.0)
    encoder = tmp_path / "enc.pt"
    list(iter_pretrain(data, PretrainConfig(epochs=1, batch_size=8, device="cpu",
                                            centre_particles=False), encoder))
    config = FinetuneConfig(epochs=1, batch_size=8, device="cpu", min_steps=0)
    notes = " ".join(str(s.metrics.get("note", ""))
                     for s in iter_finetune(data, config, tmp_path / "c.pt", init=encoder))
    assert "was trained without centring" in notes


def test_centring_is_on_by_default_for_the_global_layout_only():
    from napari_cryossl.train import FinetuneConfig, PretrainConfig
    from napari_cryossl.train.config import CENTRING_REFERENCES, encoder_overrides

    for config in (FinetuneConfig(), PretrainConfig()):
        assert encoder_overrides(config, "rb3d-small") == {"centring": CENTRING_REFERENCES}
        assert encoder_overrides(config, "rb3d") == {}  # the paper's network has no input stage
    off = FinetuneConfig(centre_particles=False, encoder_options={"width": 8})
    assert encoder_overrides(off, "rb3d-small") == {"width": 8}


def test_where_the_references_find_nothing_the_network_declines_to_centre_and_says_so(tmp_path):
    """Boxes of noise: the fit declines (profiles zero), boxes pass through unmoved, the
    checkpoint keeps the decision, and fine-tuning says why in its notes."""
    import torch

    from napari_cryossl.nn.checkpoints import classifier_from_checkpoint, load_checkpoint
    from napari_cryossl.nn.models import centring_of
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    rng = np.random.default_rng(6)
    noise = rng.standard_normal((40, 16, 16, 16)).astype(np.float32)
    encoder = _centring_encoder(noise)
    centring = centring_of(encoder)
    centring.fit(noise)
    assert centring.is_fitted and not centring.is_active
    assert centring.separation < MIN_SEPARATION
    x = torch.as_tensor(noise[:4])[:, None]
    assert torch.equal(centring(x), x) and centring.last_offsets is None

    data = SubtomogramSet.from_arrays(noise, np.resize([1, 2], 40), voxel_size=10.0)
    out = tmp_path / "c.pt"
    config = FinetuneConfig(epochs=1, batch_size=8, device="cpu", min_steps=0)
    notes = " ".join(str(s.metrics.get("note", "")) for s in iter_finetune(data, config, out))
    assert "not centred in their boxes" in notes and "separation" in notes
    model = classifier_from_checkpoint(load_checkpoint(out))
    assert centring_of(model).is_fitted and not centring_of(model).is_active

    # the CLI's log shows the note once
    import io

    from napari_cryossl.cli.console import drive

    log = io.StringIO()
    drive(iter_finetune(data, config, tmp_path / "cli.pt"), "finetune", stream=log, interval=0)
    assert log.getvalue().count("note: particles not centred in their boxes") == 1
