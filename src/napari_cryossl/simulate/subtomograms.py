"""Simulated subtomogram sets: crowded, posed, filtered boxes with their ground truth.

`simulate_subtomogram_details` plans each box (class, rotation, shift, neighbours),
renders it, applies the optics and adds noise at the configured SNR;
`simulate_subtomograms` returns only the volumes and classes, and `class_templates` the
noise-free centred templates (the ceiling baseline uses them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from napari_cryossl.io import InputError
from napari_cryossl.simulate.config import _CHUNK, SimulationConfig, _seeds
from napari_cryossl.simulate.optics import _band_noise, _noise_filter, _transfer
from napari_cryossl.simulate.render import (
    _density_bank,
    _random_directions,
    _random_rotations,
    _render,
    _render_structures,
)
from napari_cryossl.simulate.shapes import _assemblies, _stack_assemblies


@dataclass
class SimulatedSubtomograms:
    """Subtomograms with everything the simulator knows about them.

    Attributes:
        volumes: float32 (N, B, B, B) ZYX, protein dark.
        class_numbers: int64 (N,), 1-based.
        rotations: float64 (N, 3, 3); maps template xyz coordinates to particle xyz
            coordinates (x_particle = R @ x_template, about the particle centre).
        shifts_zyx: float64 (N, 3) particle centre minus box centre (index B//2), voxels.
        n_neighbors: int64 (N,) crowding neighbours placed in (or near) each box.
        noise_std: standard deviation of the added noise (0 when noise-free); with
            `snr_reference="subtomogram"` the root mean square over the boxes.
        signal_variance: mean over the subtomograms of var(noise-free volume).
    """

    volumes: np.ndarray
    class_numbers: np.ndarray
    rotations: np.ndarray
    shifts_zyx: np.ndarray
    n_neighbors: np.ndarray
    noise_std: float
    signal_variance: float


# --------------------------------------------------------------------------- subtomograms


def _plan_subtomograms(
    class_numbers: np.ndarray, config: SimulationConfig, radii: np.ndarray, rng
) -> dict[str, np.ndarray]:
    """Draw every random geometric choice up front (rotations, shifts, neighbours).

    Neighbours (of any class, or of other classes only) sit at a random direction
    from the particle, at a
    centre distance between `neighbor_gap * (r_i + r_j)` (touching, little overlap)
    and the distance where they leave the box; a candidate that would overlap an
    already placed neighbour is dropped.
    """
    n = len(class_numbers)
    m = int(config.n_neighbors)
    b = config.box_size
    cls = class_numbers - 1
    shifts = rng.uniform(-config.max_shift_px, config.max_shift_px, size=(n, 3))
    rotations = _random_rotations(n * (1 + m), rng).reshape(n, 1 + m, 3, 3)
    if config.neighbor_classes == "other" and config.n_classes > 1:
        offset = rng.integers(1, config.n_classes, size=(n, m))
        ncls = (cls[:, None] + offset) % config.n_classes
    else:
        ncls = rng.integers(0, config.n_classes, size=(n, m))
    dmin = config.neighbor_gap * (radii[cls][:, None] + radii[ncls])
    dmax = np.maximum(b / 2 + radii[ncls] * 0.5, dmin + 1.0)
    dist = rng.uniform(dmin, dmax)
    pos = shifts[:, None, :] + dist[..., None] * _random_directions((n, m), rng)
    keep = np.ones((n, m), dtype=bool)
    for j in range(m):
        for i in range(j):
            gap = np.linalg.norm(pos[:, j] - pos[:, i], axis=1)
            clash = keep[:, i] & (
                gap < config.neighbor_gap * (radii[ncls[:, i]] + radii[ncls[:, j]])
            )
            keep[:, j] &= ~clash
    defocus = config.defocus_um + config.defocus_spread_um * rng.normal(size=n)
    return {
        "shifts": shifts,
        "rotations": rotations,
        "classes": np.concatenate([cls[:, None], ncls], axis=1),
        "positions": np.concatenate([shifts[:, None, :], pos], axis=1),
        "keep": np.concatenate([np.ones((n, 1), bool), keep], axis=1),
        "defocus": defocus,
    }


def simulate_subtomogram_details(
    n_per_class: int,
    config: SimulationConfig,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulatedSubtomograms:
    """Simulate crowded subtomograms and keep the ground truth of each.

    Per subtomogram: a particle of its class at the box centre plus a uniform shift
    of up to `max_shift_px`, in a uniform random orientation; up to `n_neighbors`
    particles around it, each partly inside the box; the density is
    built in a padded box (so neighbours outside still contribute CTF fringes and
    the FFT filtering does not wrap around), multiplied in Fourier space by
    -(CTF × missing wedge × band limit), and cropped. Noise: Gaussian, white inside
    the same measured band (also filtered in a padded box and cropped), with one
    standard deviation for the whole set, as in a tomogram, chosen so that
    mean_i var(signal_i) / var(noise) = snr.

    Args:
        n_per_class: subtomograms per class (0 gives empty arrays).
        config: simulation settings.
        seed: the whole output is a function of (n_per_class, config, seed).
        workers: threads for scipy.fft (None: scipy's default, one).
        progress: called as ``progress(done, total)`` after each chunk of the signal
            and of the noise pass (``total`` counts both); never changes the output.

    Returns:
        The volumes (float32 (N, B, B, B), protein dark, in random class order) and
        their ground truth.
    """
    if int(n_per_class) != n_per_class or n_per_class < 0:
        raise InputError(f"simulation settings: n_per_class must be >= 0, got {n_per_class}")
    geometry_seed, noise_seed = _seeds(seed)
    rng = np.random.default_rng(geometry_seed)
    b = config.box_size
    labels = np.repeat(np.arange(1, config.n_classes + 1, dtype=np.int64), int(n_per_class))
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    volumes = np.zeros((n, b, b, b), dtype=np.float32)
    variances = np.zeros(n)
    bank = _density_bank(config)
    if bank is None:
        centres, sigmas, weights, radii = _stack_assemblies(_assemblies(config))
    else:
        radii = bank.radii
    plan = _plan_subtomograms(labels, config, radii, rng)

    pad = max(4, math.ceil(config.particle_diameter_px / 2))
    size = sfft.next_fast_len(b + 2 * pad, real=True)
    lo = (size - b) // 2
    grid_centre = lo + b // 2
    shape = (size, size, size)
    shared_transfer = None if config.defocus_spread_um > 0 else _transfer(shape, config)
    n_chunks = math.ceil(n / _CHUNK)
    total = n_chunks * (2 if config.noisy else 1)

    for k, start in enumerate(range(0, n, _CHUNK)):
        stop = min(start + _CHUNK, n)
        cls = plan["classes"][start:stop]  # (c, 1+m)
        rot = plan["rotations"][start:stop]  # (c, 1+m, 3, 3)
        c = stop - start
        if bank is None:
            # subunit centres: rotate each template (xyz), move to its position, go to zyx
            sub = np.einsum("cmij,cmkj->cmki", rot, centres[cls])  # (c, 1+m, K, 3) xyz
            sub_zyx = sub[..., ::-1] + plan["positions"][start:stop, :, None, :] + grid_centre
            w = weights[cls] * plan["keep"][start:stop, :, None]
            density = _render(
                sub_zyx.reshape(c, -1, 3), sigmas[cls].reshape(c, -1), w.reshape(c, -1), shape
            )
        else:
            density = np.zeros((c, *shape), dtype=np.float32)
            _render_structures(
                density,
                bank,
                cls,
                rot,
                plan["positions"][start:stop] + grid_centre,
                plan["keep"][start:stop],
            )
        spectrum = sfft.rfftn(density, axes=(1, 2, 3), workers=workers)
        del density
        if shared_transfer is None:
            spectrum *= _transfer(shape, config, plan["defocus"][start:stop])
        else:
            spectrum *= shared_transfer
        signal = sfft.irfftn(spectrum, s=shape, axes=(1, 2, 3), workers=workers)
        volumes[start:stop] = signal[:, lo : lo + b, lo : lo + b, lo : lo + b]
        variances[start:stop] = volumes[start:stop].var(axis=(1, 2, 3), dtype=np.float64)
        if progress is not None:
            progress(k + 1, total)

    signal_variance = float(variances.mean()) if n else 0.0
    noise_std = 0.0
    if config.noisy and n:
        noise_std = math.sqrt(signal_variance / config.snr)
        if config.snr_reference == "subtomogram":
            box_std = np.sqrt(variances / config.snr)
        else:
            box_std = np.full(n, noise_std)
        # Noise is stationary: a smaller padded box than the signal's gives the same
        # crop statistics at a lower cost.
        noise_size = sfft.next_fast_len(b + 2 * max(2, b // 8), real=True)
        noise_shape = (noise_size,) * 3
        band = _noise_filter(noise_shape, config)
        crop = ((noise_size - b) // 2, b)
        chunk_seeds = noise_seed.spawn(math.ceil(n / _CHUNK))
        for i, start in enumerate(range(0, n, _CHUNK)):
            stop = min(start + _CHUNK, n)
            volumes[start:stop] += _band_noise(
                (stop - start, *noise_shape),
                band,
                crop,
                box_std[start:stop],
                chunk_seeds[i],
                workers,
            )
            if progress is not None:
                progress(n_chunks + i + 1, total)
    return SimulatedSubtomograms(
        volumes=volumes,
        class_numbers=labels,
        rotations=plan["rotations"][:, 0].copy(),
        shifts_zyx=plan["shifts"].copy(),
        n_neighbors=(plan["keep"][:, 1:].sum(axis=1)).astype(np.int64),
        noise_std=noise_std,
        signal_variance=signal_variance,
    )


def simulate_subtomograms(
    n_per_class: int,
    config: SimulationConfig,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate crowded subtomograms of every class (see `simulate_subtomogram_details`).

    Args:
        n_per_class: subtomograms per class.
        config: simulation settings.
        seed: the output is a function of (n_per_class, config, seed).
        workers: threads for scipy.fft.
        progress: ``progress(done, total)`` after each chunk (see
            `simulate_subtomogram_details`).

    Returns:
        ``(volumes, class_numbers)``: float32 (N, B, B, B) ZYX with protein dark, and
        int64 (N,) 1-based class numbers, N = n_per_class * n_classes in random order.
    """
    sim = simulate_subtomogram_details(
        n_per_class, config, seed, workers=workers, progress=progress
    )
    return sim.volumes, sim.class_numbers


def class_templates(config: SimulationConfig) -> np.ndarray:
    """Noise-free densities of every class, unrotated and centred, positive = protein.

    These are the ground-truth maps (before missing wedge and CTF; protein bright
    here, unlike the simulated data): what the docs show and what a template
    matching test would search for.

    With `config.structures`, the real densities in units of protein density (1 = a
    voxel filled with protein), the centre of mass at the box centre, sampled as the
    simulator samples them.

    Returns:
        float32 (n_classes, B, B, B), the particle centre at index B//2.
    """
    b = config.box_size
    bank = _density_bank(config)
    if bank is not None:
        n = config.n_classes
        out = np.zeros((n, b, b, b), dtype=np.float32)
        _render_structures(
            out,
            bank,
            np.arange(n)[:, None],
            np.broadcast_to(np.eye(3), (n, 1, 3, 3)),
            np.full((n, 1, 3), float(b // 2)),
            np.ones((n, 1), dtype=bool),
        )
        return out
    centres, sigmas, weights, _ = _stack_assemblies(_assemblies(config))
    return _render(centres[..., ::-1] + b // 2, sigmas, weights, (b, b, b))
