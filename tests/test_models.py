"""RB3D encoder, classifier, FLOP count and checkpoints."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryossl.nn import models
from napari_cryossl.nn.checkpoints import (
    checkpoint_state,
    classifier_from_checkpoint,
    encoder_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from napari_cryossl.nn.models import PRESETS, Classifier, InputError, build_encoder, count_flops

torch.set_num_threads(1)


@pytest.fixture
def boxes16():
    torch.manual_seed(0)
    return torch.randn(2, 1, 16, 16, 16)


@pytest.mark.parametrize("box", [16, 17, 24, 28, 40])
def test_encoder_accepts_any_box_size(box):
    enc = build_encoder("rb3d-small", box)
    out = enc(torch.randn(2, 1, box, box, box))
    assert out.shape == (2, PRESETS["rb3d-small"].fc_dim)
    assert enc.feature_dim == 256 and enc.box_size == box
    assert (out >= 0).all(), "the embedding is taken after the FC layer's ReLU"


def test_paper_preset_has_published_sizes():
    enc = build_encoder("rb3d", 32)
    assert enc.feature_dim == 1024
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv3d)]
    assert convs[0].out_channels == 64 and convs[0].kernel_size == (3, 3, 3)
    assert all(c.stride == (1, 1, 1) for c in convs)
    pools = [m for m in enc.modules() if isinstance(m, nn.MaxPool3d)]
    assert len(pools) == 1 and pools[0].kernel_size == 3 and pools[0].stride == 2
    # 32^3 box -> one stride-2 pool -> 16^3 x 64 channels flattened into FC-1024
    assert enc.fc.in_features == 64 * 16**3 and enc.fc.out_features == 1024


def test_residual_block_concatenates_branches():
    block = models.ResidualConcatBlock(8)
    x = torch.randn(1, 8, 5, 5, 5)
    shortcut = block.shortcut(x)
    bottleneck = block.bottleneck(x)
    assert shortcut.shape[1] == bottleneck.shape[1] == 4
    torch.testing.assert_close(block(x), torch.relu(torch.cat([shortcut, bottleneck], dim=1)))


def test_large_boxes_are_pooled_to_max_grid():
    enc = build_encoder("rb3d", 64, width=16, fc_dim=256)
    assert enc.grid_size == PRESETS["rb3d"].max_grid
    assert enc.fc.in_features == 16 * enc.grid_size**3
    assert enc(torch.randn(1, 1, 64, 64, 64)).shape == (1, 256)


def test_small_preset_pools_globally_so_its_convolutions_fit_any_box_size():
    sizes = {
        b: {k: v.shape for k, v in build_encoder("rb3d-small", b).state_dict().items()
            if k.startswith(("stem.", "blocks."))}
        for b in (16, 24, 32)
    }
    assert sizes[16] == sizes[24] == sizes[32]
    # the FC layer sees the pooled features and one radial profile value per shell
    enc = build_encoder("rb3d-small", 32)
    assert enc.fc.in_features == 2 * 64 + 3 * (32 // 2 + 1)
    enc = build_encoder("rb3d-small", 24).eval()
    assert enc(torch.randn(3, 1, 24, 24, 24)).shape == (3, PRESETS["rb3d-small"].fc_dim)
    # the input stage: a second channel with the distance from the box centre
    x = enc.input(torch.randn(2, 1, 24, 24, 24))
    assert x.shape == (2, 2, 24, 24, 24)
    assert float(x[0, 1].min()) < 0.1 and float(x[0, 1, 0, 0, 0]) > 1.5


def test_checkpoints_written_before_the_global_layout_still_load(tmp_path):
    """An rb3d-small checkpoint of the first layout has no 'pooling' key: it is rebuilt
    with the layout it was trained with, not the preset's current one."""
    old = build_encoder("rb3d", 16, width=16, fc_dim=256)
    state = checkpoint_state(old)
    state["preset"] = "rb3d-small"
    state["architecture"] = {
        k: v for k, v in state["architecture"].items()
        if k in ("width", "fc_dim", "n_blocks", "max_grid", "batch_norm", "block_dropout")
    }
    save_checkpoint(tmp_path / "old.pt", state)
    loaded = encoder_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), old.eval()(x))


def test_wrong_input_shape_is_explained(boxes16):
    enc = build_encoder("rb3d-small", 24)
    with pytest.raises(ValueError, match=r"\(N, 1, 24, 24, 24\)"):
        enc(boxes16)


def test_unknown_preset_and_option_are_rejected():
    with pytest.raises(ValueError, match="rb3d-small"):
        build_encoder("resnet50", 32)
    with pytest.raises(ValueError, match="unknown encoder option"):
        build_encoder("rb3d", 32, widht=8)
    with pytest.raises(ValueError, match="at least 8"):
        build_encoder("rb3d", 4)


def test_overrides_change_architecture():
    enc = build_encoder("rb3d", 16, batch_norm=True, width=8, fc_dim=32)
    assert any(isinstance(m, nn.BatchNorm3d) for m in enc.modules())
    assert enc.fc.in_features == 8 * 8**3


def test_cam_layer_of_the_global_layout_has_half_the_box(boxes16):
    enc = build_encoder("rb3d-small", 16)
    seen = {}
    layer = dict(enc.named_modules())[enc.cam_layer]
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    enc(boxes16)
    handle.remove()
    assert seen["out"].shape[2:] == (8, 8, 8)


def test_cam_layer_names_last_block(boxes16):
    enc = build_encoder("rb3d", 16, width=16, fc_dim=256)
    clf = Classifier(enc, 3)
    for model in (enc, clf):
        layer = dict(model.named_modules())[model.cam_layer]
        assert layer is enc.blocks[-1]
    seen = {}
    handle = enc.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    enc(boxes16)
    handle.remove()
    assert seen["out"].shape == (2, 16, 8, 8, 8)


def test_classifier_outputs_logits_and_embeddings(boxes16):
    clf = Classifier(build_encoder("rb3d-small", 16), 4).eval()
    assert clf(boxes16).shape == (2, 4)
    torch.testing.assert_close(clf.embed(boxes16), clf.encoder(boxes16))
    assert clf.preset == "rb3d-small" and clf.box_size == 16 and clf.feature_dim == 256
    with pytest.raises(ValueError, match="at least 2 classes"):
        Classifier(build_encoder("rb3d-small", 16), 1)


def _reference_flops(width, fc_dim, box, n_blocks=4, n_classes=None):
    """Direct count of 2 x multiply-adds, layer by layer."""
    half = width // 2
    grid = (box + 1) // 2
    vol, pooled = box**3, grid**3
    flops = 2 * 27 * 1 * width * vol  # stem
    per_block = 27 * width * half + width * half + 27 * half * width + width * half
    flops += n_blocks * 2 * per_block * pooled
    flops += 2 * width * pooled * fc_dim
    if n_classes:
        flops += 2 * fc_dim * n_classes
    return flops


def _reference_flops_global(width, fc_dim, box, stages=3, n_classes=None):
    """The global-pooling layout (rb3d-small), layer by layer; the input stage has no weights."""
    flops = 2 * 27 * 2 * width * box**3  # stem on (density, radius)
    grid, c = box, width
    for _ in range(1, stages):
        grid = (grid - 1) // 2 + 1
        flops += 2 * 27 * c * (2 * c) * grid**3  # stride-2 conv
        c *= 2
        half = c // 2
        flops += 2 * (27 * c * half + c * half + 27 * half * c + c * half) * grid**3
    flops += 2 * (2 * c + 3 * (box // 2 + 1)) * fc_dim  # pooled features + radial profiles
    if n_classes:
        flops += 2 * fc_dim * n_classes
    return flops


@pytest.mark.parametrize("preset,box", [("rb3d", 32), ("rb3d", 17)])
def test_count_flops_matches_layer_by_layer_count(preset, box):
    arch = PRESETS[preset]
    enc = build_encoder(preset, box)
    assert count_flops(enc) == _reference_flops(arch.width, arch.fc_dim, box)
    clf = Classifier(enc, 5)
    assert count_flops(clf, box) == _reference_flops(arch.width, arch.fc_dim, box, n_classes=5)
    assert enc.training, "count_flops restores the training mode"


@pytest.mark.parametrize("box", [16, 28, 17])
def test_count_flops_of_the_small_preset(box):
    arch = PRESETS["rb3d-small"]
    enc = build_encoder("rb3d-small", box)
    assert count_flops(enc) == _reference_flops_global(arch.width, arch.fc_dim, box)
    clf = Classifier(enc, 5)
    assert count_flops(clf, box) == _reference_flops_global(
        arch.width, arch.fc_dim, box, n_classes=5
    )


def test_classifier_checkpoint_round_trip(tmp_path, boxes16):
    clf = Classifier(build_encoder("rb3d-small", 16), 3).eval()
    state = checkpoint_state(
        clf,
        voxel_size=np.float32(13.5),
        class_numbers=np.array([1, 2, 7]),
        class_names=("ribosome", "proteasome", "membrane"),
        method="moco",
        epoch=np.int64(5),
        config={"lr": np.float64(5e-4), "out": tmp_path},
    )
    path = tmp_path / "clf.pt"
    save_checkpoint(path, state)

    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["voxel_size"] == pytest.approx(13.5) and type(raw["voxel_size"]) is float
    assert raw["class_numbers"] == [1, 2, 7]
    assert raw["class_names"] == ["ribosome", "proteasome", "membrane"]
    assert raw["config"]["out"] == str(tmp_path)

    loaded = load_checkpoint(path, kind="classifier", preset="rb3d-small", box_size=16)
    assert loaded["kind"] == "classifier" and loaded["epoch"] == 5 and loaded["method"] == "moco"
    clf2 = classifier_from_checkpoint(loaded).eval()
    torch.testing.assert_close(clf2(boxes16), clf(boxes16), rtol=0, atol=0)
    enc = encoder_from_checkpoint(loaded).eval()
    torch.testing.assert_close(enc(boxes16), clf.embed(boxes16), rtol=0, atol=0)
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


def test_encoder_checkpoint_keeps_architecture_overrides(tmp_path, boxes16):
    enc = build_encoder("rb3d-small", 16, batch_norm=True).eval()
    path = tmp_path / "enc.pt"
    save_checkpoint(path, checkpoint_state(enc, voxel_size=10.0, method="simclr"))
    enc2 = encoder_from_checkpoint(load_checkpoint(path, kind="encoder")).eval()
    assert any(isinstance(m, nn.BatchNorm3d) for m in enc2.modules())
    torch.testing.assert_close(enc2(boxes16), enc(boxes16), rtol=0, atol=0)


def test_save_refuses_objects_that_would_need_unpickling(tmp_path):
    enc = build_encoder("rb3d-small", 16)
    state = checkpoint_state(enc, config={"callback": object()})
    with pytest.raises(TypeError, match="callback"):
        save_checkpoint(tmp_path / "x.pt", state)
    assert not list(tmp_path.iterdir())


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    enc = build_encoder("rb3d-small", 16)
    path = tmp_path / "enc.pt"
    save_checkpoint(path, checkpoint_state(enc, epoch=1))
    before = path.read_bytes()

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(models.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, checkpoint_state(enc, epoch=2))
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]
    assert load_checkpoint(path)["epoch"] == 1


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_load_errors_name_the_file(tmp_path):
    enc = build_encoder("rb3d-small", 16)
    good = tmp_path / "enc.pt"
    save_checkpoint(good, checkpoint_state(enc))

    with pytest.raises(InputError, match="missing.pt.*not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(InputError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "encoder", "model": _Evil()}, evil, _use_new_zipfile_serialization=True)
    with pytest.raises(InputError, match="evil.pt"):
        load_checkpoint(evil)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError, match="foreign.pt.*not a napari-cryossl checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(InputError, match="enc.pt.*encoder checkpoint, expected a classifier"):
        load_checkpoint(good, kind="classifier")
    with pytest.raises(InputError, match="enc.pt.*'rb3d-small', not 'rb3d'"):
        load_checkpoint(good, preset="rb3d")
    with pytest.raises(InputError, match="enc.pt.*16\\^3 boxes, not 32\\^3"):
        load_checkpoint(good, box_size=32)
    future = tmp_path / "future.pt"
    save_checkpoint(future, {**checkpoint_state(enc), "version": 99})
    with pytest.raises(InputError, match="future.pt.*newer"):
        load_checkpoint(future)
    assert issubclass(InputError, ValueError)


def test_a_new_encoder_keeps_the_signal_scale_through_its_layers():
    """He-normal weights: different subtomograms get clearly different embeddings.

    With PyTorch's default initialisation the spread across particles at the FC output of
    rb3d-small was ~0.001 (nothing for fine-tuning to work with); He init keeps it O(0.1+).
    """
    torch.manual_seed(0)
    enc = build_encoder("rb3d-small", 16).eval()
    for module in enc.modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0
    with torch.no_grad():
        emb = enc(torch.randn(32, 1, 16, 16, 16))
    assert emb.std(0).mean() > 0.05, float(emb.std(0).mean())


def test_radial_profiles_do_not_change_when_the_particle_turns():
    from napari_cryossl.nn.models import RadialProfiles

    profiles = RadialProfiles(16).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    turned = x.transpose(2, 4)  # swap z and x about the centre voxel 8: the shells stay
    other = torch.randn(1, 1, 16, 16, 16)
    a, b, c = profiles(torch.cat([x, turned, other]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert float((a - c).abs().max()) > 1e-2
