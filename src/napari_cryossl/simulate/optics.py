"""The imaging model: contrast transfer function, missing wedge, band limit and noise.

What a tomogram measures of a density: the CTF (`contrast_transfer`) with protein dark,
the missing wedge of a ±tilt series about Y (`missing_wedge_mask`), the band limit of
the reconstruction, and Gaussian noise white inside that measured band. All are
filters on batched real FFTs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft

from napari_cryossl.simulate.config import SimulationConfig

# --------------------------------------------------------------------------- optics


def _wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1 + 0.978466e-6 * v))


def contrast_transfer(
    k: np.ndarray, config: SimulationConfig, defocus_um: float | np.ndarray | None = None
) -> np.ndarray:
    """The CTF as applied by the simulator, at spatial frequencies `k` (1/Å).

    CTF(k) = sqrt(1 - A²) sin χ + A cos χ,  χ = π λ Δf k² - (π/2) Cs λ³ k⁴,
    times the envelope exp(-B k²/4); Δf > 0 is underfocus, so the CTF is positive
    at low frequency and the simulator's leading minus sign (tomogram =
    -CTF ⊛ density) makes protein dark. With `phase_flip` the absolute value is
    returned (a phase-flipped, CTF-corrected tomogram).

    Args:
        k: spatial frequencies in 1/Å (any shape).
        config: voltage, Cs, amplitude contrast, B-factor, phase flip.
        defocus_um: overrides `config.defocus_um`; may broadcast against `k`.

    Returns:
        CTF values, same shape as the broadcast of `k` and `defocus_um`.
    """
    lam = _wavelength_a(config.voltage_kv)
    dz = (config.defocus_um if defocus_um is None else np.asarray(defocus_um)) * 1e4  # Å
    cs = config.cs_mm * 1e7  # Å
    k2 = np.asarray(k, dtype=np.float64) ** 2
    chi = np.pi * lam * dz * k2 - 0.5 * np.pi * cs * lam**3 * k2**2
    a = config.amplitude_contrast
    ctf = math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi)
    if config.bfactor > 0:
        ctf = ctf * np.exp(-config.bfactor * k2 / 4)
    return np.abs(ctf) if config.phase_flip else ctf


def _frequencies(shape: tuple[int, int, int], voxel_size: float) -> tuple[np.ndarray, ...]:
    """Broadcastable kz, ky, kx (1/Å) on the rfftn grid of `shape`."""
    kz = sfft.fftfreq(shape[0], d=voxel_size)[:, None, None]
    ky = sfft.fftfreq(shape[1], d=voxel_size)[None, :, None]
    kx = sfft.rfftfreq(shape[2], d=voxel_size)[None, None, :]
    return kz, ky, kx


def _wedge_keep(kz: np.ndarray, kx: np.ndarray, tilt_range_deg: float) -> np.ndarray:
    """Broadcast bool mask of the measured region: |kz| cos θ <= |kx| sin θ."""
    theta = math.radians(tilt_range_deg)
    return np.abs(kz) * math.cos(theta) <= np.abs(kx) * math.sin(theta) + 1e-12


def missing_wedge_mask(shape_zyx: tuple[int, int, int], tilt_range_deg: float) -> np.ndarray:
    """Fourier coefficients that a ±tilt_range_deg tilt series about Y measures.

    The beam is along Z and the specimen tilts about Y, so the projections fill the
    central planes that contain the ky axis and lie within ±tilt_range_deg of the
    kx axis in the (kx, kz) plane: |kz| cos θ <= |kx| sin θ. The rest, a wedge
    about kz on either side, is missing (elongation of densities along Z).

    Args:
        shape_zyx: real-space shape of the volume.
        tilt_range_deg: half the tilt range (60 for ±60°); 90 keeps everything.

    Returns:
        bool array of the `scipy.fft.rfftn` layout, shape (Z, Y, X//2 + 1).
    """
    kz, ky, kx = _frequencies(tuple(shape_zyx), 1.0)
    keep = _wedge_keep(kz, kx, tilt_range_deg)
    return np.broadcast_to(keep, (len(kz), ky.shape[1], kx.shape[2])).copy()


def _lowpass(k: np.ndarray, config: SimulationConfig) -> np.ndarray | float:
    """The reconstruction's band limit: 1 below 0.8/lowpass_a, cos² roll-off to 0 at 1/lowpass_a."""
    if config.lowpass_a is None:
        return 1.0
    cutoff = 1.0 / config.lowpass_a
    t = np.clip((k - 0.8 * cutoff) / (0.2 * cutoff), 0.0, 1.0)
    return np.cos(0.5 * np.pi * t) ** 2


def _band(kz: np.ndarray, ky: np.ndarray, kx: np.ndarray, config: SimulationConfig) -> np.ndarray:
    """What the reconstruction measures: missing wedge × band limit (broadcast float64)."""
    wedge = _wedge_keep(kz, kx, config.tilt_range_deg)
    return wedge * _lowpass(np.sqrt(kz**2 + ky**2 + kx**2), config)


def _transfer(shape: tuple[int, int, int], config: SimulationConfig, defocus_um=None) -> np.ndarray:
    """-(CTF × wedge × band limit) on the rfftn grid: density -> tomogram, protein dark.

    With `defocus_um` an array (n,), returns (n, Z, Y, X//2+1).
    """
    kz, ky, kx = _frequencies(shape, config.voxel_size)
    band = _band(kz, ky, kx, config)
    if not config.apply_ctf:
        return np.broadcast_to(-band, (len(kz), ky.shape[1], kx.shape[2])).astype(np.float32)
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    if defocus_um is not None:
        df = np.asarray(defocus_um, float).reshape(-1, 1, 1, 1)
        return (-contrast_transfer(k[None], config, df) * band).astype(np.float32)
    return (-contrast_transfer(k, config) * band).astype(np.float32)


def _noise_filter(shape: tuple[int, int, int], config: SimulationConfig) -> np.ndarray:
    """Amplitude filter of the noise on the rfftn grid: the measured band (wedge × band limit)."""
    kz, ky, kx = _frequencies(shape, config.voxel_size)
    band = _band(kz, ky, kx, config)
    return np.broadcast_to(band, (len(kz), ky.shape[1], kx.shape[2])).astype(np.float32)


# --------------------------------------------------------------------------- noise


def _band_noise(
    shape: tuple[int, ...],
    band: np.ndarray,
    crop: tuple[int, int],
    std: float | np.ndarray,
    seed: np.random.SeedSequence,
    workers: int | None,
) -> np.ndarray:
    """Gaussian noise, white inside the measured band, cropped, each box at exactly `std`.

    A reconstructed tomogram has no Fourier coefficients in the missing wedge (nor
    beyond its band limit), noise included; noise there would be a cue real data
    lack. Like the signal, the noise is filtered in a padded box and then cropped
    (`crop` = (start, size) along each axis), as when a subtomogram is cut out of
    a tomogram. Each box is rescaled to the exact standard deviation so the SNR is
    exact (`std`: one for all boxes, or one per box).
    """
    spectrum = _white_spectrum(np.random.default_rng(seed), shape)
    spectrum *= band
    noise = sfft.irfftn(spectrum, s=shape[1:], axes=(1, 2, 3), workers=workers)
    del spectrum
    lo, b = crop
    noise = noise[:, lo : lo + b, lo : lo + b, lo : lo + b]
    stds = np.broadcast_to(np.asarray(std, dtype=np.float64), (len(noise),))
    for item, target in zip(noise, stds, strict=True):
        item *= np.float32(target / max(math.sqrt(_variance(item)), 1e-30))
    return noise


def _white_spectrum(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """`rfftn` (over the last 3 axes) of white Gaussian noise, drawn in Fourier space.

    Saves the forward FFT of real noise. The half-spectrum's kx = 0 and Nyquist
    planes must be Hermitian (X(-kz, -ky) = conj X(kz, ky)) for the spectrum to be
    that of a real volume; they are made so by averaging with their mirror, which
    halves their variance, so they are drawn with twice the variance. The overall
    scale is arbitrary (callers normalise).
    """
    half = (*shape[:-1], shape[-1] // 2 + 1)
    # (..., 2) float32 pairs viewed as complex64: one contiguous draw
    spectrum = rng.standard_normal((*half, 2), dtype=np.float32).view(np.complex64)[..., 0]
    planes = [0, -1] if shape[-1] % 2 == 0 else [0]
    for p in planes:
        plane = spectrum[..., p] * np.float32(math.sqrt(2))
        mirror = np.conj(np.roll(np.flip(plane, axis=(-2, -1)), 1, axis=(-2, -1)))
        spectrum[..., p] = (plane + mirror) * np.float32(0.5)
    return spectrum


def _variance(volume: np.ndarray) -> float:
    """Variance of a float32 volume in float64, slab by slab (no full-size temporaries)."""
    total = 0.0
    total_sq = 0.0
    step = max(1, 2**22 // max(1, volume[0].size))
    for z0 in range(0, volume.shape[0], step):
        slab = volume[z0 : z0 + step].astype(np.float64)
        total += float(slab.sum())
        total_sq += float(np.square(slab).sum())
    mean = total / volume.size
    return max(total_sq / volume.size - mean * mean, 0.0)
