"""3D Grad-CAM against a per-particle reference, and pasting heatmaps into tomogram space."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from napari_cryossl.analysis.saliency import gradcam, gradcam_for_set, paste_heatmaps
from napari_cryossl.io import InputError, make_particle_table, write_mrc
from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint
from napari_cryossl.nn.models import Classifier, build_encoder
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.particles.extract import extract_subtomograms

BOX = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    # The paper's flatten layout (narrow): the reference below follows its layers.
    model = Classifier(build_encoder("rb3d", BOX, width=16, fc_dim=256), 3)
    for module in model.modules():  # He init: gradients of a useful size
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    model.eval()
    with torch.no_grad():  # centre the logits so that random boxes get different classes
        logits = model(torch.from_numpy(boxes(12, seed=99))[:, None])
        model.head[1].bias -= logits.mean(0)
    return model


def boxes(n=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, BOX, BOX, BOX)).astype(np.float32)


def reference_cam(model, box: np.ndarray, class_index: int | None) -> np.ndarray:
    """Grad-CAM of one particle, written out step by step (no hooks, no batching)."""
    enc = model.encoder
    x = torch.from_numpy(box)[None, None]
    acts = enc.feature_maps(x).detach().requires_grad_(True)  # output of blocks.3
    emb = enc.fc_relu(enc.fc(torch.flatten(enc.reduce(acts), 1)))
    logits = model.head(emb)[0]
    c = int(logits.argmax()) if class_index is None else class_index
    (grad,) = torch.autograd.grad(logits[c], acts)
    weights = grad[0].mean(dim=(1, 2, 3))
    cam = torch.relu((weights[:, None, None, None] * acts[0].detach()).sum(0))
    up = torch.nn.functional.interpolate(
        cam[None, None], size=(BOX,) * 3, mode="trilinear", align_corners=False
    )[0, 0].numpy()
    span = up.max() - up.min()
    return (up - up.min()) / span if span > 0 else np.zeros_like(up)


def test_batched_gradcam_equals_the_per_particle_reference_for_each_predicted_class(model):
    x = boxes(6)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    # float32 (amp off), as the reference: bfloat16 gradients differ by more than 1e-5
    maps = gradcam(model, x, device="cpu", batch_size=4, amp=False)
    assert maps.shape == (6, BOX, BOX, BOX) and maps.dtype == np.float32
    for i in range(6):
        np.testing.assert_allclose(maps[i], reference_cam(model, x[i], None), atol=1e-5)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.allclose(maps.reshape(6, -1).max(1), 1.0)
    # one batch holding different predicted classes: each particle uses its own class
    assert len(set(predicted.tolist())) > 1


def test_a_chosen_class_number_is_explained_and_unknown_ones_are_refused(model):
    x = boxes(3, seed=4)
    classes = [2, 5, 7]
    maps = gradcam(model, x, target=7, device="cpu", class_numbers=classes, amp=False)
    for i in range(3):
        np.testing.assert_allclose(maps[i], reference_cam(model, x[i], 2), atol=1e-5)
    per_particle = gradcam(
        model, x, target=[2, 5, 7], device="cpu", class_numbers=classes, amp=False
    )
    for i in range(3):
        np.testing.assert_allclose(per_particle[i], reference_cam(model, x[i], i), atol=1e-5)
    with pytest.raises(InputError, match="class 4 is not one of the classifier's classes"):
        gradcam(model, x, target=4, device="cpu", class_numbers=classes)


def test_layer_choice_and_the_model_is_left_as_it_was(model):
    x = boxes(2, seed=5)
    model.train()
    try:
        deep = gradcam(model, x, device="cpu")
        early = gradcam(model, x, layer="blocks.0", device="cpu")  # relative to the encoder
        same = gradcam(model, x, layer="encoder.blocks.0", device="cpu")
        assert model.training  # restored
    finally:
        model.eval()
    assert not np.allclose(deep, early)
    np.testing.assert_allclose(early, same)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(InputError, match="not in the model"):
        gradcam(model, x, layer="blocks.9", device="cpu")
    with pytest.raises(InputError, match="shape"):
        gradcam(model, np.zeros((2, 12, 12, 12), np.float32), device="cpu")


# -- pasting into tomogram space --------------------------------------------------------------


def test_pasting_uses_the_same_boxes_as_extraction_including_at_the_edges():
    shape = (20, 24, 28)
    tomogram = np.random.default_rng(0).uniform(1.0, 2.0, size=shape).astype(np.float32)
    centers = np.array(
        [
            [10.0, 12.0, 14.0],  # inside
            [0.0, 0.0, 0.0],  # corner: clipped on three faces
            [19.0, 23.0, 27.0],  # opposite corner
            [10.4, 2.5, 26.6],  # rounding: 2.5 -> 3, 26.6 -> 27
        ]
    )
    box = 8
    extracted, _inside = extract_subtomograms(tomogram, centers, box, normalise=False)
    for center, sub in zip(centers, extracted, strict=True):
        pasted = paste_heatmaps(shape, center[None], sub[None], radius=0)
        start = np.floor(center + 0.5).astype(int) - box // 2
        lo, hi = np.maximum(start, 0), np.minimum(start + box, shape)
        expected = np.zeros(shape, np.float32)
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        expected[region] = tomogram[region]
        np.testing.assert_array_equal(pasted, expected)


def test_overlapping_boxes_blend_by_max_and_boxes_outside_are_ignored():
    shape = (10, 10, 10)
    maps = np.stack([np.full((4, 4, 4), 0.3), np.full((4, 4, 4), 0.7), np.ones((4, 4, 4))])
    centers = [[4, 4, 4], [5, 5, 5], [40, 40, 40]]
    out = paste_heatmaps(shape, centers, maps, radius=0)
    assert out.dtype == np.float32 and out.shape == shape
    assert out[3, 3, 3] == np.float32(0.7)  # covered by both
    assert out[2, 2, 2] == np.float32(0.3)  # first box only
    assert out[6, 6, 6] == np.float32(0.7)
    assert out[9, 9, 9] == 0.0 and out.max() == np.float32(0.7)
    assert (out > 0).sum() == 4**3 + 4**3 - 3**3


def test_binned_heatmaps_are_upsampled_to_the_tomogram_voxels():
    out = paste_heatmaps((16, 16, 16), [[8, 8, 8]], np.ones((1, 4, 4, 4)), binning=2, radius=0)
    assert (out > 0).sum() == 8**3
    assert out[4:12, 4:12, 4:12].min() == 1.0


def test_each_map_is_drawn_inside_a_sphere_about_its_particle_not_as_a_box():
    """No checkerboard of box tiles over the tomogram: zero outside every particle."""
    shape = (24, 24, 40)
    centers = np.array([[12.0, 12.0, 10.0], [12.3, 11.6, 22.0]])  # boxes touch along x
    maps = np.ones((2, 12, 12, 12), np.float32)
    out = paste_heatmaps(shape, centers, maps, radius=4.0)
    zz, yy, xx = np.indices(shape)
    dist = np.min(
        [np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) for c in centers],
        axis=0,
    )
    assert np.all(out[dist > 4.0 + 1e-6] == 0)
    assert np.all(out[dist <= 3.9] == 1)
    # default: a third of the box edge (a box is about 1.5 particle diameters)
    default = paste_heatmaps(shape, centers, maps)
    assert np.all(default[dist > 4.0 + 1e-6] == 0) and default[12, 12, 10] == 1


def test_paste_refuses_inconsistent_input():
    with pytest.raises(InputError, match="2 heatmaps for 1 particle centres"):
        paste_heatmaps((8, 8, 8), [[1, 2, 3]], np.zeros((2, 4, 4, 4)))
    with pytest.raises(InputError, match="finite"):
        paste_heatmaps((8, 8, 8), [[np.nan, 2, 3]], np.zeros((1, 4, 4, 4)))


# -- files -----------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path, model):
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, checkpoint_state(model, voxel_size=10.0, class_numbers=[1, 2, 3]))
    return path


def test_gradcam_for_a_tomogram_writes_one_heatmap_aligned_with_it(tmp_path, checkpoint):
    shape = (24, 32, 40)
    tomo_path = tmp_path / "tomo01.mrc"
    write_mrc(tomo_path, np.random.default_rng(2).normal(size=shape).astype(np.float32), 10.0)
    centers = np.array([[12.0, 16.0, 20.0], [3.0, 30.0, 38.0]])  # the second is at the edge
    data = SubtomogramSet.from_table(make_particle_table(centers), tomo_path, BOX)
    written = gradcam_for_set(checkpoint, data, tmp_path / "cams", device="cpu")
    assert written == [tmp_path / "cams" / "tomo01_gradcam.mrc"]
    with mrcfile.open(written[0]) as mrc:
        heat = np.asarray(mrc.data)
        assert heat.shape == shape and np.isclose(float(mrc.voxel_size.x), 10.0)
    expected = paste_heatmaps(shape, centers, gradcam(checkpoint, data.load([0, 1]), device="cpu"))
    np.testing.assert_allclose(heat, expected, atol=1e-6)
    assert heat.max() == pytest.approx(1.0) and heat[0:4, 0:8, 0:12].max() == 0.0


def test_gradcam_for_subtomograms_writes_one_heatmap_per_particle(tmp_path, checkpoint):
    data = SubtomogramSet.from_arrays(boxes(3), voxel_size=10.0)
    written = gradcam_for_set(checkpoint, data, tmp_path / "cams", device="cpu", batch_size=2)
    assert [p.name for p in written] == [f"particle_00000{i}_gradcam.mrc" for i in (1, 2, 3)]
    with mrcfile.open(written[1]) as mrc:
        np.testing.assert_allclose(
            mrc.data, gradcam(checkpoint, data.load([1]), device="cpu")[0], atol=1e-5
        )
