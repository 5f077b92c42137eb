"""Simulated crowded tomograms with their particle tables.

`simulate_tomogram` places non-overlapping particles in a volume, renders them in
chunks, filters the whole tomogram in Z slabs (bounded temporaries) and adds band
noise at the configured SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sfft

from napari_cryossl.io import InputError, make_particle_table
from napari_cryossl.simulate.clutter import _draw_clutter, _render_clutter, clutter_distance
from napari_cryossl.simulate.config import _CHUNK, SimulationConfig, _seeds
from napari_cryossl.simulate.optics import (
    _band,
    _frequencies,
    _variance,
    _white_spectrum,
    contrast_transfer,
)
from napari_cryossl.simulate.render import (
    _density_bank,
    _random_rotations,
    _render,
    _render_structures,
)
from napari_cryossl.simulate.shapes import _assemblies, _stack_assemblies

# Tomograms are Fourier-filtered in slabs of this many Z planes (bounded temporaries).
_SLAB = 8


# --------------------------------------------------------------------------- tomogram


def _place_particles(
    shape: tuple[int, int, int],
    classes: np.ndarray,
    radii: np.ndarray,
    config: SimulationConfig,
    rng: np.random.Generator,
    margin: float | None = None,
    clutter: pd.DataFrame | None = None,
) -> np.ndarray:
    """Random sequential placement without heavy overlap; (n, 3) zyx centres.

    Centres stay `margin` (default half a nominal diameter) from the faces; two
    particles are at least `tomogram_gap * (r_i + r_j)` apart (r: class bounding radius),
    and at least `tomogram_gap * r_i` from the matter of any `clutter` object (without
    clutter the draws are those of a tomogram without it).
    """
    n = len(classes)
    if margin is None:
        margin = config.particle_diameter_px / 2
    lo = np.full(3, margin)
    hi = np.asarray(shape, float) - 1 - margin
    if np.any(hi < lo):
        raise InputError(
            f"simulation settings: a tomogram of shape {tuple(shape)} is too small for "
            f"particles of {config.particle_diameter_px:.1f} voxels"
        )
    placed = np.empty((n, 3))
    placed_r = np.empty(n)
    count = 0
    tries = 0
    max_tries = 200 * n + 1000
    batch = 256
    while count < n and tries < max_tries:
        cands = rng.uniform(lo, hi, size=(batch, 3))
        if clutter is not None and len(clutter):
            free = clutter_distance(clutter, cands).min(axis=1)
        else:
            free = np.full(batch, np.inf)
        for cand, room in zip(cands, free, strict=True):
            tries += 1
            r = radii[classes[count]]
            if room < config.tomogram_gap * r:
                continue
            if count:
                d = np.linalg.norm(placed[:count] - cand, axis=1)
                if np.any(d < config.tomogram_gap * (placed_r[:count] + r)):
                    continue
            placed[count] = cand
            placed_r[count] = r
            count += 1
            if count == n:
                break
    if count < n:
        raise InputError(
            f"simulation settings: could place only {count} of {n} particles of "
            f"{config.particle_diameter_px:.1f} voxels without overlap in a tomogram of shape "
            f"{tuple(shape)}"
            + (
                f" beside {len(clutter)} clutter objects"
                if clutter is not None and len(clutter)
                else ""
            )
            + "; use fewer particles or a larger tomogram"
        )
    return placed


@dataclass
class SimulatedTomogram:
    """A simulated tomogram with its ground truth (`simulate_tomogram_details`).

    Attributes:
        volume: float32 ZYX tomogram, protein dark.
        particles: the particle table (x, y, z voxels, class_number, source "simulated").
        clutter: the clutter table (`simulate.clutter.CLUTTER_COLUMNS`: kind, x, y, z and
            the geometry in voxels, density), empty when there is none.
        density: the density before the optics (float32 ZYX, protein = 1, positive),
            when asked for with ``keep_density=True``; else None.
    """

    volume: np.ndarray
    particles: pd.DataFrame
    clutter: pd.DataFrame
    density: np.ndarray | None = None


def simulate_tomogram(
    shape_zyx: tuple[int, int, int],
    n_particles: int,
    config: SimulationConfig,
    seed: int = 0,
    *,
    workers: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate a crowded tomogram and its ground-truth particle table.

    The same as `simulate_tomogram_details` without the clutter table:
    ``(volume, particles)``.
    """
    result = simulate_tomogram_details(shape_zyx, n_particles, config, seed, workers=workers)
    return result.volume, result.particles


def simulate_tomogram_details(
    shape_zyx: tuple[int, int, int],
    n_particles: int,
    config: SimulationConfig,
    seed: int = 0,
    *,
    workers: int | None = None,
    keep_density: bool = False,
) -> SimulatedTomogram:
    """Simulate a crowded tomogram with its particle and clutter tables.

    With `config.clutter` (the default), clutter is drawn first
    (`napari_cryossl.simulate.clutter`: gold fiducials, vesicles, membranes, ice,
    filaments, optionally a carbon edge, at the configured amounts per µm² of field of
    view) from its own random stream; the particles are then placed around it.
    Particles of balanced random classes are placed at random without heavy overlap
    (centre distance >= `tomogram_gap` × the sum of bounding radii, about a
    diameter), in uniform random orientations. The whole volume is then filtered
    by -(CTF × missing wedge × band limit) in Fourier space (padded, so nothing
    wraps around; one defocus for the whole tomogram) and Gaussian noise, white
    inside the same measured band, is added: with
    `tomogram_snr_reference="particles"` its variance is the mean over particles of
    the signal variance in a `box_size` box around each, divided by snr, so the
    subtomograms one extracts have the same SNR as `simulate_subtomograms`.

    Clutter is rendered into the same density as the particles, so it goes through
    the same optics; the noise level refers to the signal around the particles,
    clutter included where it is near them.

    Memory: about three float32 copies of the (padded) volume at the peak; the
    density is rendered particle by particle in small windows.

    Args:
        shape_zyx: tomogram shape in voxels, ZYX.
        n_particles: particles to place.
        config: simulation settings.
        seed: the output is a function of (shape, n_particles, config, seed).
        workers: threads for scipy.fft.
        keep_density: also return the density before the optics (one more copy).

    Returns:
        `SimulatedTomogram`: the float32 ZYX volume, protein dark; the particle table
        (`napari_cryossl.io.PARTICLE_COLUMNS`) with x, y, z centres in voxels,
        class_number and source "simulated"; the clutter table; the density if asked.
    """
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(
            f"simulation settings: tomogram shape must be 3 positive sizes, got {shape_zyx}"
        )
    if int(n_particles) != n_particles or n_particles < 0:
        raise InputError(f"simulation settings: n_particles must be >= 0, got {n_particles}")
    n = int(n_particles)
    geometry_seed, noise_seed = _seeds(seed)
    rng = np.random.default_rng(geometry_seed)
    bank = _density_bank(config)
    if bank is None:
        centres, sigmas, weights, radii = _stack_assemblies(_assemblies(config))
        margin = None
    else:
        radii = bank.radii
        margin = float(np.median(radii))  # real particles differ in size: the typical one
    classes = (np.arange(n) % config.n_classes)[rng.permutation(n)]
    clutter = _draw_clutter(shape, config, seed)
    zyx = _place_particles(shape, classes, radii, config, rng, margin, clutter)
    rotations = _random_rotations(n, rng)

    # render particle by particle into a padded volume (windows computed in batches)
    half = math.ceil(radii.max() + 1) if bank is None else int(bank.windows.max())
    window = 2 * half + 1
    pad = half + 2
    padded = tuple(sfft.next_fast_len(s + 2 * pad, real=True) for s in shape)
    offset = np.array([(p - s) // 2 for p, s in zip(padded, shape, strict=True)])
    volume = np.zeros(padded, dtype=np.float32)
    if bank is not None and n:
        _render_structures(
            volume[None],
            bank,
            classes[None],
            rotations[None],
            (zyx + offset)[None],
            np.ones((1, n), dtype=bool),
        )
    for start in range(0, n if bank is None else 0, _CHUNK):
        stop = min(start + _CHUNK, n)
        cls = classes[start:stop]
        sub = np.einsum("cij,ckj->cki", rotations[start:stop], centres[cls])[..., ::-1]
        pos = zyx[start:stop] + offset
        corner = np.floor(pos).astype(np.int64) - half
        local = sub + (pos - corner)[:, None, :]
        boxes = _render(local, sigmas[cls], weights[cls], (window,) * 3)
        for box, c in zip(boxes, corner, strict=True):
            volume[c[0] : c[0] + window, c[1] : c[1] + window, c[2] : c[2] + window] += box
    _render_clutter(volume, clutter, offset, config.voxel_size)
    density = None
    if keep_density:
        density = volume[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))].copy()

    spectrum = _rfft3(volume, workers)
    del volume
    kz, ky, kx = _frequencies(padded, config.voxel_size)
    for z0 in range(0, padded[0], _SLAB):  # slab by slab: no full-size frequency arrays
        kzs = kz[z0 : z0 + _SLAB]
        band = _band(kzs, ky, kx, config)
        if config.apply_ctf:
            filt = -contrast_transfer(np.sqrt(kzs**2 + ky**2 + kx**2), config) * band
        else:
            filt = -band
        spectrum[z0 : z0 + _SLAB] *= filt.astype(np.float32)
    out = _irfft3(spectrum, padded, offset, shape, workers)
    del spectrum

    if config.noisy:
        variance = _tomogram_signal_variance(out, zyx, config)
        if variance > 0:
            _add_band_noise(out, math.sqrt(variance / config.snr), config, noise_seed, workers)
    table = make_particle_table(zyx, class_number=classes + 1, source="simulated")
    return SimulatedTomogram(out, table, clutter, density)


def _rfft3(volume: np.ndarray, workers: int | None) -> np.ndarray:
    """`rfftn` of a large float32 volume with one complex64 copy, not two.

    The real-to-complex transform runs along X slab by slab into a preallocated
    array; the complex transforms along Z and Y then run in place.
    """
    z, y, x = volume.shape
    spectrum = np.empty((z, y, x // 2 + 1), dtype=np.complex64)
    for z0 in range(0, z, _SLAB):
        spectrum[z0 : z0 + _SLAB] = sfft.rfft(volume[z0 : z0 + _SLAB], axis=2, workers=workers)
    return sfft.fftn(spectrum, axes=(0, 1), overwrite_x=True, workers=workers)


def _irfft3(
    spectrum: np.ndarray,
    shape: tuple[int, int, int],
    offset: np.ndarray,
    crop: tuple[int, int, int],
    workers: int | None,
) -> np.ndarray:
    """Inverse of `_rfft3` (destroys `spectrum`), keeping only the region `offset:offset+crop`."""
    spectrum = sfft.ifftn(spectrum, axes=(0, 1), overwrite_x=True, workers=workers)
    (z0, y0, x0), (cz, cy, cx) = offset, crop
    out = np.empty(crop, dtype=np.float32)
    for s0 in range(0, cz, _SLAB):
        rows = spectrum[z0 + s0 : z0 + min(s0 + _SLAB, cz), y0 : y0 + cy]
        out[s0 : s0 + _SLAB] = sfft.irfft(rows, n=shape[2], axis=2, workers=workers)[
            ..., x0 : x0 + cx
        ]
    return out


def _spectrum_variance(spectrum: np.ndarray, n_x: int) -> float:
    """Variance of the real volume whose `rfftn` is `spectrum` (Parseval), slab by slab."""
    n = spectrum.shape[0] * spectrum.shape[1] * n_x
    weight = np.full(spectrum.shape[2], 2.0)
    weight[0] = 1.0
    if n_x % 2 == 0:
        weight[-1] = 1.0
    power = 0.0
    for z0 in range(0, spectrum.shape[0], _SLAB):
        slab = spectrum[z0 : z0 + _SLAB]
        power += float(
            (np.square(slab.real, dtype=np.float64) + np.square(slab.imag, dtype=np.float64)).sum(
                axis=(0, 1)
            )
            @ weight
        )
    mean = float(spectrum[0, 0, 0].real) / n
    return max(power / n / n - mean * mean, 0.0)


def _add_band_noise(
    out: np.ndarray, std: float, config: SimulationConfig, seed, workers: int | None
) -> None:
    """Add band-limited Gaussian noise of exactly `std` to a tomogram, in place.

    Like `_band_noise`, but with one complex64 copy of the volume: the noise is
    drawn in Fourier space, filtered and transformed back slab by slab, and its
    variance comes from the spectrum (Parseval).
    """
    z, y, x = out.shape
    spectrum = _white_spectrum(np.random.default_rng(seed), out.shape)
    kz, ky, kx = _frequencies(out.shape, config.voxel_size)
    for z0 in range(0, z, _SLAB):
        spectrum[z0 : z0 + _SLAB] *= _band(kz[z0 : z0 + _SLAB], ky, kx, config).astype(np.float32)
    scale = np.float32(std / max(math.sqrt(_spectrum_variance(spectrum, x)), 1e-30))
    spectrum = sfft.ifftn(spectrum, axes=(0, 1), overwrite_x=True, workers=workers)
    for z0 in range(0, z, _SLAB):
        noise = sfft.irfft(spectrum[z0 : z0 + _SLAB], n=x, axis=2, workers=workers)
        noise *= scale
        out[z0 : z0 + _SLAB] += noise


def _tomogram_signal_variance(
    signal: np.ndarray, zyx: np.ndarray, config: SimulationConfig
) -> float:
    """Signal variance the tomogram's SNR refers to (see `tomogram_snr_reference`)."""
    if config.tomogram_snr_reference == "volume" or len(zyx) == 0:
        return _variance(signal)
    b = config.box_size
    variances = []
    for c in np.floor(zyx + 0.5).astype(np.int64):
        lo = np.maximum(c - b // 2, 0)
        hi = np.minimum(c - b // 2 + b, signal.shape)
        box = signal[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        variances.append(box.var(dtype=np.float64))
    return float(np.mean(variances))
