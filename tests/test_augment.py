"""Geometry and randomness of the subtomogram augmentation (ZYX volumes, z = beam axis)."""

import math

import pytest
import torch

from napari_cryossl.nn.augment import SubtomogramAugment, affine_3d, resized_crop_3d

torch.set_num_threads(1)


def marker(box, zyx):
    x = torch.zeros(1, 1, box, box, box)
    x[(0, 0, *zyx)] = 1.0
    return x


def brightest(x):
    return tuple(int(i) for i in (x[0, 0] == x[0, 0].max()).nonzero()[0])


@pytest.mark.parametrize(
    "box,zyx,expected",
    [
        # even box: centre 7.5; offset (dy, dx) = (-0.5, 4.5) -> (-dx, dy) = (-4.5, -0.5)
        (16, (5, 7, 12), (5, 3, 7)),
        # odd box: centre 7; offset (0, 4) -> (-4, 0)
        (15, (4, 7, 11), (4, 3, 7)),
        # offset (2, 0) -> (0, 2)
        (15, (10, 9, 7), (10, 7, 9)),
    ],
)
def test_rotation_by_90_degrees_about_z_moves_marker_to_expected_voxel(box, zyx, expected):
    out = affine_3d(marker(box, zyx), 90.0)
    assert brightest(out) == expected
    assert out.max().item() == pytest.approx(1.0, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_rotation_about_z_keeps_marker_in_its_z_plane():
    box, z = 17, 3
    x = marker(box, (z, 5, 12))
    for angle in (17.0, -33.0, 45.0, 123.0):
        out = affine_3d(x, angle, translate_yx=(1.5, -2.0))
        # trilinear resampling of a single voxel does not conserve its sum exactly
        assert out[0, 0, z].sum().item() == pytest.approx(1.0, abs=0.1)
        others = torch.cat([out[0, 0, :z], out[0, 0, z + 1 :]])
        assert others.abs().max().item() < 1e-6


def test_rotation_preserves_distance_from_axis():
    box = 21  # centre 10
    out = affine_3d(marker(box, (10, 10, 16)), 30.0)  # 6 voxels from the z axis
    plane = out[0, 0, 10]
    yy, xx = torch.meshgrid(torch.arange(box), torch.arange(box), indexing="ij")
    cy = (plane * yy).sum() / plane.sum()
    cx = (plane * xx).sum() / plane.sum()
    assert math.hypot(cy - 10, cx - 10) == pytest.approx(6.0, abs=0.3)
    # +x towards -y for a positive angle: the marker moved up (smaller y)
    assert cy < 10 - 2.5 and cx == pytest.approx(10 + 6 * math.cos(math.radians(30)), abs=0.3)


def test_translation_is_in_voxels_along_y_and_x():
    out = affine_3d(marker(16, (5, 7, 9)), 0.0, translate_yx=(2.0, -3.0))
    assert brightest(out) == (5, 9, 6)


def test_scale_moves_content_away_from_centre():
    # centre 8 in a 17-box; offsets (-2, 1, 3) doubled -> (-4, 2, 6)
    out = affine_3d(marker(17, (6, 9, 11)), 0.0, scale=2.0)
    weights = out[0, 0]
    idx = torch.stack(torch.meshgrid(*(torch.arange(17),) * 3, indexing="ij"))
    centroid = [(weights * idx[i]).sum() / weights.sum() for i in range(3)]
    assert [round(float(c), 3) for c in centroid] == [4.0, 10.0, 14.0]


def test_affine_3d_matches_kornia_random_affine3d_convention():
    from kornia.augmentation import RandomAffine3D

    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, 12, 12)
    kornia_aug = RandomAffine3D(
        degrees=((0.0, 0.0), (0.0, 0.0), (30.0, 30.0)),  # (yaw x, pitch y, roll z)
        scale=(1.08, 1.08),
        p=1.0,
        align_corners=True,
    )
    expected = kornia_aug(x)
    torch.testing.assert_close(affine_3d(x, 30.0, (0.0, 0.0), 1.08), expected)


def test_affine_identity_and_per_sample_parameters():
    torch.manual_seed(1)
    x = torch.randn(3, 1, 10, 10, 10)
    torch.testing.assert_close(affine_3d(x, 0.0, (0.0, 0.0), 1.0), x, atol=1e-5, rtol=0)
    out = affine_3d(x, torch.tensor([0.0, 90.0, 0.0]), torch.zeros(3, 2), torch.ones(3))
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x[1], k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="per-sample"):
        affine_3d(x, torch.zeros(2))


def test_crop_of_whole_box_is_identity():
    torch.manual_seed(2)
    x = torch.randn(2, 1, 12, 13, 14)
    full = torch.tensor([[12.0, 13.0, 14.0]] * 2)
    torch.testing.assert_close(resized_crop_3d(x, torch.zeros(2, 3), full), x, atol=1e-4, rtol=0)
    aug = SubtomogramAugment(crop_p=1.0, crop_scale=(1.0, 1.0), affine_p=0.0)
    torch.testing.assert_close(aug(x), x, atol=1e-4, rtol=0)


def test_crop_resamples_sub_box_to_full_size():
    box = 16
    ramp = torch.arange(box, dtype=torch.float32).expand(box, box, box)  # value = x index
    x = torch.stack([ramp, ramp.transpose(0, 2)])[:, None]  # second: value = z index
    origin = torch.tensor([[4.0, 4.0, 4.0], [2.0, 0.0, 0.0]])
    size = torch.tensor([[8.0, 8.0, 8.0], [10.0, 16.0, 16.0]])
    out = resized_crop_3d(x, origin, size)
    assert out.shape == x.shape
    expected_x = 4 + torch.arange(box) * 7 / 15  # x from 4 to 11 over 16 voxels
    torch.testing.assert_close(out[0, 0, 3, 5], expected_x, atol=1e-3, rtol=0)
    expected_z = 2 + torch.arange(box) * 9 / 15  # z from 2 to 11
    torch.testing.assert_close(out[1, 0, :, 7, 7], expected_z, atol=1e-3, rtol=0)


def test_random_parameters_respect_the_papers_ranges():
    aug = SubtomogramAugment()
    torch.manual_seed(3)
    shape = (32, 28, 24)
    angle, shift, scale = aug.sample_affine(2000, shape)
    assert angle.abs().max() <= 45 and angle.abs().max() > 40
    assert shift[:, 0].abs().max() <= 0.1 * 28 and shift[:, 1].abs().max() <= 0.1 * 24
    assert shift[:, 1].abs().max() > 0.09 * 24
    assert scale.min() >= 0.9 and scale.max() <= 1.1
    origin, size = aug.sample_crop(2000, shape)
    full = torch.tensor(shape, dtype=torch.float32)
    fraction = (size / full).prod(dim=1)
    assert fraction.min() >= 0.5 - 1e-6 and fraction.max() <= 1.0 + 1e-6
    ratio = size / full  # crops keep the aspect ratio: same relative edge on each axis
    torch.testing.assert_close(ratio[:, 0], ratio[:, 2])
    assert (origin >= 0).all() and (origin + size <= full + 1e-4).all()


def test_deterministic_under_manual_seed_and_independent_per_sample():
    aug = SubtomogramAugment(crop_p=1.0, affine_p=1.0)
    torch.manual_seed(4)
    x = torch.randn(1, 1, 12, 12, 12).repeat(3, 1, 1, 1, 1)
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(124)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1]), "identical inputs get different augmentations"
    assert a.shape == x.shape and a.dtype == x.dtype


def test_probabilities_select_samples():
    torch.manual_seed(5)
    x = torch.randn(64, 1, 8, 8, 8)
    assert torch.equal(SubtomogramAugment(crop_p=0.0, affine_p=0.0)(x), x)
    torch.manual_seed(6)
    out = SubtomogramAugment()(x)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-4
    # P(neither) = 0.25: with 64 samples both outcomes occur
    assert 0.5 < changed.float().mean() < 0.95


def test_input_is_not_modified_and_bad_arguments_rejected():
    x = torch.randn(2, 1, 8, 8, 8)
    before = x.clone()
    SubtomogramAugment(crop_p=1.0, affine_p=1.0)(x)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="crop_p"):
        SubtomogramAugment(crop_p=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        SubtomogramAugment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        SubtomogramAugment()(torch.randn(8, 8, 8))


# -- 3D rotations (the default fine-tuning recipe) ---------------------------------------------


def test_rotate_3d_moves_content_as_documented():
    from napari_cryossl.nn.augment import rotate_3d

    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 7] = 1.0  # offset (dz, dy, dx) = (0, 0, 3) from the centre
    quarter_z = torch.tensor([[[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]])  # (0, 0, 3) -> (0, -3, 0)
    out = rotate_3d(x, quarter_z)
    assert (out[0, 0] > 0.5).nonzero().tolist() == [[4, 1, 4]]
    # the same turn as the paper's affine_3d at +90°
    torch.testing.assert_close(out, affine_3d(x, 90.0), atol=1e-5, rtol=0)
    shifted = rotate_3d(x, torch.eye(3)[None], torch.tensor([[1.0, 2.0, -1.0]]))
    assert (shifted[0, 0] > 0.5).nonzero().tolist() == [[5, 6, 6]]


def test_random_rotations_are_proper_rotations():
    from napari_cryossl.nn.augment import random_rotations, tta_rotations

    r = random_rotations(64, torch.Generator().manual_seed(0))
    eye = torch.eye(3).expand(64, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(64), atol=1e-5, rtol=0)
    views = tta_rotations(8)
    assert views.shape == (8, 3, 3) and torch.equal(views[0], torch.eye(3))


def test_so3_augment_turns_particles_out_of_the_xy_plane():
    """The paper's z-rotation keeps every voxel in its z plane; 'so3' does not."""
    x = torch.zeros(32, 1, 15, 15, 15)
    x[:, 0, 7, 7, 10:13] = 1.0  # a rod along x, in the central z plane
    z_only = SubtomogramAugment(crop_p=0, affine_p=1, translate=0, scale=0)
    so3 = SubtomogramAugment(crop_p=0, affine_p=1, translate=0, scale=0, rotation="so3")
    torch.manual_seed(0)
    off_plane_z = z_only(x)[:, 0].sum(dim=(2, 3))  # mass per z plane
    torch.manual_seed(0)
    off_plane_so3 = so3(x)[:, 0].sum(dim=(2, 3))
    assert float(off_plane_z[:, 7].sum() / off_plane_z.sum()) > 0.99
    assert float(off_plane_so3[:, 7].sum() / off_plane_so3.sum()) < 0.7


def test_reapplied_wedge_empties_the_missing_wedge_and_keeps_the_scale():
    from napari_cryossl.nn.augment import reapply_wedge
    from napari_cryossl.simulate import missing_wedge_mask

    x = torch.randn(4, 1, 16, 16, 16)
    out = reapply_wedge(x, 60.0)
    spec = torch.fft.rfftn(out[:, 0], dim=(1, 2, 3)).abs()
    missing = torch.from_numpy(~missing_wedge_mask((16, 16, 16), 60.0))
    assert float(spec[:, missing].max()) < 1e-3 * float(spec.max())
    torch.testing.assert_close(out.std(dim=(2, 3, 4)), x.std(dim=(2, 3, 4)), atol=1e-4, rtol=1e-4)


def test_noise_adds_fresh_noise_scaled_to_each_box():
    """noise=k adds Gaussian noise of k x the box's std, new at every call."""
    import torch

    from napari_cryossl.nn.augment import SubtomogramAugment

    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16, 16) * torch.tensor([1.0, 2.0, 4.0, 8.0]).view(4, 1, 1, 1, 1)
    aug = SubtomogramAugment(crop_p=0.0, affine_p=0.0, noise=0.5)
    first, second = aug(x), aug(x)
    added = (first - x).flatten(1).std(dim=1) / x.flatten(1).std(dim=1)
    assert torch.allclose(added, torch.full((4,), 0.5), atol=0.05)
    assert not torch.allclose(first, second)  # fresh noise each time
    assert torch.equal(SubtomogramAugment(crop_p=0.0, affine_p=0.0)(x), x)  # default: none
    with pytest.raises(ValueError, match="noise"):
        SubtomogramAugment(noise=-1.0)
