"""Batched 3D augmentation of subtomograms on the training device.

The pipeline of Gupta et al. (2022, section 3.3), applied independently to each
subtomogram of a batch:

1. random resized crop with probability 0.5: a sub-box holding 50-100 % of the
   volume is cut out and resampled (trilinear) back to the box size;
2. random affine with probability 0.5: rotation by -45..45 degrees about the
   beam axis z, translation by up to 10 % of the box in x and y, isotropic
   scaling by 0.9..1.1.

Arrays are ZYX (``(N, 1, D, H, W)`` tensors, D = z = the beam axis), so a
rotation "about z" turns every YX slice in-plane and keeps each voxel in its
z-plane; the missing wedge, which is symmetric about z, is left where it is.

kornia 0.9 provides the geometry: ``kornia.geometry.transform.crop_and_resize3d``
(per-sample crop boxes + trilinear resampling) and ``get_affine_matrix3d`` +
``warp_affine3d``, the functions behind ``kornia.augmentation.RandomAffine3D``.
kornia has no 3D *random resized* crop (``RandomResizedCrop`` is 2D only), so the
crop-box sampling is written here; the affine parameters are also sampled here
(a few lines) so that ``affine_3d`` -- the deterministic transform the tests pin
down -- is exactly what training applies. ``tests/test_augment.py`` checks that
``affine_3d`` agrees with ``RandomAffine3D`` given the same parameters.

Particles in a cell come in every orientation, and the paper's rotations about z by
at most 45° teach a network little of that. ``rotation="so3"`` draws uniform random 3D
rotations (and shifts along all three axes) instead, applied by ``rotate_3d`` (torch's
``affine_grid``/``grid_sample``). A rotated box also turns its missing wedge; with
``wedge_deg`` set, the wedge of the data's geometry (beam z, tilt axis y) is applied
again after the rotation, so every training box lacks at least the real wedge
(``docs/training.md`` compares the options).

Random numbers come from torch's CPU generator (or the ``generator`` passed in),
so ``torch.manual_seed`` makes the augmentation reproducible on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "SubtomogramAugment",
    "affine_3d",
    "random_rotations",
    "reapply_wedge",
    "resized_crop_3d",
    "rotate_3d",
    "super_fibonacci_rotations",
    "tta_rotations",
]


def _per_sample(value: float | Sequence[float] | torch.Tensor, n: int, like: torch.Tensor):
    """Broadcast a scalar or per-sample value to a float tensor of shape (n,)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"expected a scalar or {n} per-sample values, got shape {tuple(t.shape)}")
    return t


def _check_volumes(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"expected volumes of shape (N, C, D, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got {x.dtype}")


def affine_3d(
    x: torch.Tensor,
    angle_z_deg: float | Sequence[float] | torch.Tensor = 0.0,
    translate_yx: Sequence[float] | torch.Tensor = (0.0, 0.0),
    scale: float | Sequence[float] | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Rotate about z, translate in y/x and scale volumes about their centre.

    Conventions (checked by tests): the centre is ``((D-1)/2, (H-1)/2, (W-1)/2)``;
    a positive angle turns each YX slice counter-clockwise *as napari shows it*
    (y pointing down), i.e. a voxel at +x from the centre moves towards -y, and
    90 degrees takes offset (dy, dx) to (-dx, dy); translations are in voxels and
    move the content towards +y / +x; scale > 1 enlarges the content. Voxels
    brought in from outside the box are 0, the mean of a normalised subtomogram.
    Interpolation is trilinear.

    Args:
        x: (N, C, D, H, W) float volumes, ZYX.
        angle_z_deg: rotation about z in degrees, a scalar or (N,) values.
        translate_yx: (dy, dx) in voxels, or an (N, 2) tensor.
        scale: isotropic scale factor, a scalar or (N,) values.

    Returns:
        (N, C, D, H, W) transformed volumes on the same device and dtype.
    """
    from kornia.geometry.transform import get_affine_matrix3d, warp_affine3d

    _check_volumes(x)
    n, _, d, h, w = x.shape
    if n == 0:
        return x.clone()
    params = x.new_zeros(n)  # dtype/device template
    angle = _per_sample(angle_z_deg, n, params)
    scale_t = _per_sample(scale, n, params)
    if torch.any(scale_t <= 0):
        raise ValueError("scale factors must be positive")
    shift = torch.as_tensor(translate_yx, dtype=x.dtype, device=x.device)
    if shift.ndim == 1:
        shift = shift.expand(n, 2)
    if shift.shape != (n, 2):
        raise ValueError(f"translate_yx must be (dy, dx) or (N, 2), got {tuple(shift.shape)}")
    zeros = x.new_zeros(n)
    # kornia's geometry works in (x, y, z) voxel coordinates; a z-only axis-angle
    # vector is its "roll", a rotation of each (y, x) slice.
    translations = torch.stack([shift[:, 1], shift[:, 0], zeros], dim=1)
    center = x.new_tensor([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2]).expand(n, 3)
    angles = torch.stack([zeros, zeros, angle], dim=1)
    matrix = get_affine_matrix3d(translations, center, scale_t[:, None].expand(n, 3), angles)
    # align_corners=True: kornia resamples exactly along the voxel-coordinate matrix.
    return warp_affine3d(x, matrix[:, :3, :], (d, h, w), "bilinear", align_corners=True)


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) uniform random rotations of SO(3) (normalised Gaussian quaternions), CPU."""
    q = torch.randn(n, 4, generator=generator)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _quaternion_matrices(*q.unbind(1))


def super_fibonacci_rotations(n: int) -> torch.Tensor:
    """``n`` near-uniform rotations of SO(3) as (n, 3, 3) float64 matrices.

    Super-Fibonacci spirals (Alexa, CVPR 2022): unit quaternions on two interleaved
    spirals with irrational steps, far more even than random draws of the same count.
    """
    phi = math.sqrt(2.0)
    psi = 1.533751168755204288118041
    s = torch.arange(int(n), dtype=torch.float64) + 0.5
    t = s / max(int(n), 1)
    r, big_r = t.sqrt(), (1.0 - t).sqrt()
    alpha, beta = 2 * math.pi * s / phi, 2 * math.pi * s / psi
    w, x = r * torch.sin(alpha), r * torch.cos(alpha)
    y, z = big_r * torch.sin(beta), big_r * torch.cos(beta)
    return _quaternion_matrices(w, x, y, z)


def tta_rotations(k: int) -> torch.Tensor:
    """(k, 3, 3) float32 views for test-time augmentation: the identity, then k - 1
    super-Fibonacci rotations."""
    eye = torch.eye(3, dtype=torch.float64)[None]
    if k <= 1:
        return eye.float()
    return torch.cat([eye, super_fibonacci_rotations(k - 1)]).float()


def _quaternion_matrices(w, x, y, z) -> torch.Tensor:
    """Rotation matrices of unit quaternions (w, x, y, z), stacked to (n, 3, 3)."""
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=1,
    )


def rotate_3d(
    x: torch.Tensor,
    rotations: torch.Tensor,
    shift_zyx: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate (and shift, scale) each volume about its centre; trilinear, zeros outside.

    Args:
        x: (N, C, D, H, W) float volumes, cubic or not.
        rotations: (N, 3, 3) rotation matrices acting on (z, y, x) offsets from the
            centre: the content at offset u moves to R @ u.
        shift_zyx: (N, 3) shifts in voxels (content moves by +shift), or None.
        scale: (N,) isotropic scale factors (> 1 enlarges), or None.

    Returns:
        (N, C, D, H, W) resampled volumes on the same device and dtype.
    """
    import torch.nn.functional as F

    _check_volumes(x)
    n, _, d, h, w = x.shape
    if n == 0:
        return x.clone()
    rot = rotations.to(device=x.device, dtype=x.dtype)
    # affine_grid maps each *output* position to the *input* position it samples, in
    # normalised (x, y, z) coordinates: input = R^T (output - shift) / scale.
    half = x.new_tensor([(d - 1) / 2, (h - 1) / 2, (w - 1) / 2]).clamp_min(0.5)
    inverse = rot.transpose(1, 2)
    if scale is not None:
        inverse = inverse / scale.to(device=x.device, dtype=x.dtype).view(n, 1, 1)
    # zyx voxel offsets -> normalised offsets: divide by the half extent of each axis.
    a = inverse * half[None, None, :] / half[None, :, None]
    t = torch.zeros(n, 3, dtype=x.dtype, device=x.device)
    if shift_zyx is not None:
        s = shift_zyx.to(device=x.device, dtype=x.dtype) / half
        t = -(a @ s[:, :, None])[:, :, 0]
    # zyx -> xyz: reverse both the rows and the columns.
    theta = torch.cat([a.flip(1).flip(2), t.flip(1)[:, :, None]], dim=2)
    grid = F.affine_grid(theta, (n, x.shape[1], d, h, w), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def reapply_wedge(x: torch.Tensor, tilt_range_deg: float) -> torch.Tensor:
    """Multiply each volume's spectrum by the missing wedge of a ±tilt_range_deg tilt
    series about y (beam along z), then restore each volume's mean and standard deviation.
    """
    shape = tuple(x.shape[2:])
    theta = torch.deg2rad(torch.tensor(float(tilt_range_deg), dtype=torch.float64))
    kz = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None, None]
    kx = torch.fft.rfftfreq(shape[2], dtype=torch.float64)[None, None, :]
    keep = (kz.abs() * torch.cos(theta) <= kx.abs() * torch.sin(theta) + 1e-12).to(x.dtype)
    keep = keep.expand(shape[0], shape[1], shape[2] // 2 + 1).to(x.device)
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    std = x.std(dim=(2, 3, 4), keepdim=True)
    spec = torch.fft.rfftn(x.float(), dim=(2, 3, 4)) * keep
    out = torch.fft.irfftn(spec, s=shape, dim=(2, 3, 4)).to(x.dtype)
    out = out - out.mean(dim=(2, 3, 4), keepdim=True)
    out = out * (std / out.std(dim=(2, 3, 4), keepdim=True).clamp_min(1e-12))
    return out + mean


def resized_crop_3d(
    x: torch.Tensor,
    origin_zyx: torch.Tensor,
    size_zyx: torch.Tensor,
) -> torch.Tensor:
    """Cut a sub-box out of each volume and resample it (trilinear) to the full box.

    Args:
        x: (N, C, D, H, W) float volumes.
        origin_zyx: (N, 3) voxel coordinate of each crop's first voxel centre.
        size_zyx: (N, 3) crop edge lengths in voxels (may be fractional); a crop
            of the whole box is ``origin 0, size (D, H, W)`` and returns ``x``.

    Returns:
        (N, C, D, H, W) resampled crops.
    """
    from kornia.geometry.transform import crop_and_resize3d

    _check_volumes(x)
    n, _, d, h, w = x.shape
    if n == 0:
        return x.clone()
    origin = origin_zyx.to(device=x.device, dtype=x.dtype)
    # kornia boxes are inclusive voxel-centre corners in (x, y, z) order.
    last = origin + size_zyx.to(device=x.device, dtype=x.dtype) - 1
    z0, y0, x0 = origin.unbind(1)
    z1, y1, x1 = last.unbind(1)
    corners = [
        (x0, y0, z0),
        (x1, y0, z0),
        (x1, y1, z0),
        (x0, y1, z0),
        (x0, y0, z1),
        (x1, y0, z1),
        (x1, y1, z1),
        (x0, y1, z1),
    ]
    boxes = torch.stack([torch.stack(c, dim=1) for c in corners], dim=1)  # (N, 8, 3)
    return crop_and_resize3d(x, boxes, (d, h, w), interpolation="bilinear", align_corners=True)


class SubtomogramAugment(nn.Module):
    """Random resized crop + random z-rotation/translation/scale, per subtomogram.

    Defaults are the paper's (Gupta et al. 2022, section 3.3). The module has no
    weights; it runs on whatever device the input is on.

    Args:
        crop_p: probability of the random resized crop.
        crop_scale: (min, max) fraction of the *volume* kept by the crop. Crops
            keep the box's aspect ratio (each edge is scaled by fraction^(1/3)),
            so a particle is zoomed isotropically, never stretched.
        affine_p: probability of the random affine transform.
        rotate_z_deg: rotation about z drawn from [-rotate_z_deg, rotate_z_deg].
        translate: shift in y and x drawn from [-t, t] x the box's height / width.
        scale: scale factor drawn from [1 - scale, 1 + scale].
        rotation: "z" (the paper's: about the beam axis by up to ``rotate_z_deg``,
            shifts in y and x) or "so3" (uniform random 3D rotations, shifts along
            z, y and x; ``rotate_z_deg`` is ignored).
        wedge_deg: re-apply the missing wedge of a ±wedge_deg tilt series about y
            after the transforms (None: don't).
        noise: add fresh Gaussian noise of ``noise`` x each box's own standard
            deviation after the transforms (0: none). At low SNR a network can learn
            the noise of its few training boxes by heart; new noise at every step
            takes that away (noise injection, a classic regulariser).
        generator: optional ``torch.Generator`` (CPU) for the random draws;
            defaults to torch's global generator so ``torch.manual_seed`` works.
    """

    def __init__(
        self,
        crop_p: float = 0.5,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        affine_p: float = 0.5,
        rotate_z_deg: float = 45.0,
        translate: float = 0.1,
        scale: float = 0.1,
        rotation: str = "z",
        wedge_deg: float | None = None,
        noise: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        for name, p in (("crop_p", crop_p), ("affine_p", affine_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if rotate_z_deg < 0 or translate < 0 or not 0 <= scale < 1:
            raise ValueError(
                "rotate_z_deg and translate must be >= 0 and scale in [0, 1), got "
                f"{rotate_z_deg}, {translate}, {scale}"
            )
        if rotation not in ("z", "so3"):
            raise ValueError(f"rotation must be 'z' or 'so3', got {rotation!r}")
        if wedge_deg is not None and not 0 < float(wedge_deg) <= 90:
            raise ValueError(f"wedge_deg must be in (0, 90] or None, got {wedge_deg}")
        if not 0.0 <= float(noise) < 10.0:
            raise ValueError(f"noise must be in [0, 10) (x the box's std), got {noise}")
        self.noise = float(noise)
        self.rotation = rotation
        self.wedge_deg = None if wedge_deg is None else float(wedge_deg)
        self.crop_p = float(crop_p)
        self.crop_scale = (float(lo), float(hi))
        self.affine_p = float(affine_p)
        self.rotate_z_deg = float(rotate_z_deg)
        self.translate = float(translate)
        self.scale = float(scale)
        self.generator = generator

    def extra_repr(self) -> str:
        return (
            f"crop_p={self.crop_p}, crop_scale={self.crop_scale}, affine_p={self.affine_p}, "
            f"rotate_z_deg={self.rotate_z_deg}, translate={self.translate}, scale={self.scale}, "
            f"rotation={self.rotation!r}, wedge_deg={self.wedge_deg}, noise={self.noise}"
        )

    def _uniform(self, n: int, lo: float, hi: float, dims: int = 1) -> torch.Tensor:
        u = torch.rand(n, dims, generator=self.generator)
        return (lo + (hi - lo) * u).squeeze(1) if dims == 1 else lo + (hi - lo) * u

    def sample_crop(self, n: int, shape_dhw: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crop boxes: (origin_zyx, size_zyx), each (n, 3) on the CPU."""
        full = torch.tensor([float(s) for s in shape_dhw])
        fraction = self._uniform(n, *self.crop_scale)
        size = full[None, :] * fraction[:, None] ** (1.0 / 3.0)
        origin = (full[None, :] - size) * torch.rand(n, 3, generator=self.generator)
        return origin, size

    def sample_affine(
        self, n: int, shape_dhw: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random (angle_z_deg (n,), translate_yx (n, 2) voxels, scale (n,)) on the CPU."""
        _, h, w = shape_dhw
        angle = self._uniform(n, -self.rotate_z_deg, self.rotate_z_deg)
        shift = self._uniform(n, -self.translate, self.translate, dims=2)
        shift = shift * torch.tensor([float(h), float(w)])
        scale = self._uniform(n, 1.0 - self.scale, 1.0 + self.scale)
        return angle, shift, scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> augmented copy of the same shape, device and dtype."""
        _check_volumes(x)
        n = x.shape[0]
        shape = x.shape[2:]
        out = x.clone()
        # Draw every random number up front, in a fixed order, so the result
        # depends only on the seed and the batch size.
        do_crop = torch.rand(n, generator=self.generator) < self.crop_p
        origin, size = self.sample_crop(n, shape)
        do_affine = torch.rand(n, generator=self.generator) < self.affine_p
        angle, shift, scale = self.sample_affine(n, shape)
        if self.rotation == "so3":
            rotations = random_rotations(n, self.generator)
            shift_z = self._uniform(n, -self.translate, self.translate) * float(shape[0])
        if do_crop.any():
            idx = do_crop.nonzero().squeeze(1)
            out[idx.to(x.device)] = resized_crop_3d(out[idx.to(x.device)], origin[idx], size[idx])
        if do_affine.any():
            idx = do_affine.nonzero().squeeze(1)
            dev_idx = idx.to(x.device)
            if self.rotation == "so3":
                shift_zyx = torch.cat([shift_z[:, None], shift], dim=1)
                out[dev_idx] = rotate_3d(out[dev_idx], rotations[idx], shift_zyx[idx], scale[idx])
            else:
                out[dev_idx] = affine_3d(out[dev_idx], angle[idx], shift[idx], scale[idx])
        if self.wedge_deg is not None:
            out = reapply_wedge(out, self.wedge_deg)
        if self.noise > 0:
            std = out.flatten(1).std(dim=1).view(n, *([1] * (out.dim() - 1)))
            fresh = torch.randn(out.shape, generator=self.generator).to(out.device, out.dtype)
            out = out + self.noise * std * fresh
        return out
