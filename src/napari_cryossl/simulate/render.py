"""Particles on the voxel grid: Gaussian assemblies, real densities and random poses.

`_render` sums the subunits of a batch of posed synthetic particles as separable
Gaussians (one matrix product per z plane); `_density_bank` and `_render_structures`
do the same for real complexes (`SimulationConfig.structures`), sampled from a finer
grid. `_random_rotations` draws the uniform 3D poses both use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_cryossl.io import InputError
from napari_cryossl.simulate.config import _CHUNK, SimulationConfig

# --------------------------------------------------------------------------- structures

# Real densities are computed on a grid this many times finer than the simulation's
# and sampled by trilinear interpolation at the rotated voxel centres: on the fine
# grid, interpolation blurs the 25 Å band much less than on the coarse one.
_OVERSAMPLE = 2


@dataclass(frozen=True)
class _DensityBank:
    """Real complexes at the scale of a configuration (see `_density_bank`)."""

    names: list[str]
    maps: list[np.ndarray]  # volume fraction (1 = protein), on a grid _OVERSAMPLE x finer
    centres: np.ndarray  # (n, 3) index of the centre of mass in each fine map
    radii: np.ndarray  # (n,) bounding radius in voxels: 99 % of the mass
    windows: np.ndarray  # (n,) half-width in voxels of the window each particle is drawn in


def _density_bank(config: SimulationConfig) -> _DensityBank | None:
    """Load the densities of `config.structures` (cached), or None for synthetic shapes.

    Each density is computed at voxel_size / 2 with a resolution of twice the
    simulation's voxel size (its Nyquist limit), in units of protein density.

    Raises:
        InputError: a structure that does not fit the box (99 % of its mass must lie
            within half a box edge of its centre).
    """
    if config.structures is None:
        return None
    from napari_cryossl.simulate.structures import (
        PROTEIN_DENSITY,
        load_structure,
        resolve_structures,
    )

    sources = resolve_structures(config.structures)[: config.n_classes]
    names, maps, centres, radii, windows = [], [], [], [], []
    too_big = []
    for src in sources:
        item = load_structure(
            src, config.voxel_size / _OVERSAMPLE, resolution=2 * config.voxel_size
        )
        radius = item.radius_a(0.99) / config.voxel_size
        if 2 * radius > config.box_size:
            too_big.append(
                f"{item.name} ({item.source}) is {2 * radius * config.voxel_size:.0f} Å across "
                f"(99 % of its mass), {2 * radius:.1f} voxels at {config.voxel_size:g} Å/voxel"
            )
        names.append(item.name)
        maps.append(np.ascontiguousarray(item.density / PROTEIN_DENSITY, dtype=np.float64))
        centres.append(np.array(item.density.shape) // 2)
        radii.append(radius)
        windows.append(math.ceil(item.radius_a(0.999) / config.voxel_size) + 1)
    if too_big:
        raise InputError(
            "simulation settings: structures do not fit a "
            f"{config.box_size}-voxel box: " + "; ".join(too_big) + "; use a larger box_size "
            "or voxel_size (or, for a model with several copies, the chains of one: "
            "model.cif#A,B,...)"
        )
    return _DensityBank(names, maps, np.array(centres), np.array(radii), np.array(windows))


def _render_structures(
    out: np.ndarray,
    bank: _DensityBank,
    classes: np.ndarray,
    rotations: np.ndarray,
    centres_zyx: np.ndarray,
    keep: np.ndarray,
) -> None:
    """Add rotated real densities to a batch of volumes, in place.

    Each particle is drawn in a cube window around its centre: the window's voxel
    centres are rotated back into the template frame (x_template = Rᵀ x_particle)
    and the template, on its finer grid, is sampled there by trilinear interpolation
    (one `scipy.ndimage.map_coordinates` call per class); parts outside `out` are
    dropped.

    Args:
        out: float32 (n, Z, Y, X) volumes to add to.
        bank: the densities.
        classes: (n, m) 0-based class of each particle slot.
        rotations: (n, m, 3, 3) xyz rotations, x_particle = R @ x_template.
        centres_zyx: (n, m, 3) particle centres in voxel coordinates of `out`.
        keep: (n, m) bool, slots to draw.
    """
    shape = np.array(out.shape[1:])
    for k in np.unique(classes[keep]):
        h = int(bank.windows[k])
        w = 2 * h + 1
        offsets = np.indices((w, w, w), dtype=np.float64).reshape(3, -1).T  # (w³, 3) zyx
        # Only the ball of the window can hold density: the particle centre lies in the
        # unit cube at the window's centre, and its density within h - 1 of that centre.
        ball = np.linalg.norm(offsets - (h + 0.5), axis=1) <= h + 0.5
        offsets = offsets[ball]
        slots = np.argwhere(keep & (classes == k))
        for start in range(0, len(slots), _CHUNK):
            sel = slots[start : start + _CHUNK]
            centre = centres_zyx[sel[:, 0], sel[:, 1]]
            corner = np.floor(centre).astype(np.int64) - h
            d = (corner - centre)[:, None, :] + offsets[None]  # (p, w³, 3) zyx
            # x_particle = R x_template in xyz; in zyx the matrix is R[::-1, ::-1]
            rot_zyx = rotations[sel[:, 0], sel[:, 1]][:, ::-1, ::-1]
            t = np.matmul(d, rot_zyx)  # (Rᵀ d)ᵀ = dᵀ R: the template frame (voxels)
            coords = bank.centres[k] + _OVERSAMPLE * t
            sampled = ndimage.map_coordinates(
                bank.maps[k],
                coords.reshape(-1, 3).T,
                order=1,
                mode="constant",
                cval=0.0,
                prefilter=False,
            )
            values = np.zeros((len(sel), w * w * w), dtype=np.float32)
            values[:, ball] = sampled.reshape(len(sel), -1)
            values = values.reshape(len(sel), w, w, w)
            for (i, _), c, v in zip(sel, corner, values, strict=True):
                lo = np.maximum(c, 0)
                hi = np.minimum(c + w, shape)
                if np.any(hi <= lo):
                    continue
                a, b = lo - c, hi - c
                out[i, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += v[
                    a[0] : b[0], a[1] : b[1], a[2] : b[2]
                ]


# --------------------------------------------------------------------------- rendering


def _render(
    centres_zyx: np.ndarray, sigmas: np.ndarray, weights: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Sum isotropic Gaussians on a voxel grid, for a batch of volumes at once.

    An isotropic Gaussian factorises, g(z, y, x) = gz(z) gy(y) gx(x), so a volume
    of K subunits is Σ_k gz_k ⊗ gy_k ⊗ gx_k: one (Z·Y, K) @ (K, X) matrix product per
    volume instead of K full-grid exponentials. Hand-written because no library
    renders Gaussian mixtures on a grid this way.

    Args:
        centres_zyx: (n, K, 3) centres in voxel coordinates of the grid.
        sigmas: (n, K) standard deviations in voxels.
        weights: (n, K) integrated masses (0 for padding subunits).
        shape: grid shape (Z, Y, X).

    Returns:
        float32 (n, Z, Y, X) densities.
    """
    # Move the zero-mass subunits (class padding, dropped neighbours) to the end and
    # leave them out: the matrix product costs in proportion to K.
    order = np.argsort(weights == 0, axis=1, kind="stable")
    k = max(int((weights != 0).sum(axis=1).max(initial=0)), 1)
    order = order[:, :k]
    centres_zyx = np.take_along_axis(centres_zyx, order[..., None], axis=1)
    sigmas = np.take_along_axis(sigmas, order, axis=1)
    weights = np.take_along_axis(weights, order, axis=1)
    sig = sigmas.astype(np.float32)[..., None]
    amp = (weights / ((2 * np.pi) ** 1.5 * sigmas**3)).astype(np.float32)[..., None]
    axes = []
    for axis in range(3):
        grid = np.arange(shape[axis], dtype=np.float32)
        d = grid[None, None, :] - centres_zyx[..., axis].astype(np.float32)[..., None]
        axes.append(np.exp(-0.5 * (d / sig) ** 2))
    gz, gy, gx = axes
    gz *= amp
    # (n, Z, 1, K) * (n, 1, Y, K) -> (n, Z, Y, K), then one (Y, K) @ (K, X) product per
    # z plane. Small products run on one BLAS thread: one large product per volume
    # wakes OpenBLAS's threads, which then spin and slow the FFTs on a busy machine
    # (measured 3x slower overall on 2 shared cores).
    plane = gz.transpose(0, 2, 1)[:, :, None, :] * gy.transpose(0, 2, 1)[:, None, :, :]
    return np.matmul(plane, gx[:, None])


# --------------------------------------------------------------------------- poses


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotations of SO(3) as (n, 3, 3) matrices."""
    if n == 0:
        return np.zeros((0, 3, 3))
    return Rotation.random(n, rng).as_matrix().reshape(n, 3, 3)


def _random_directions(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
