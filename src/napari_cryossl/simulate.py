"""Ground-truth cryo-ET data: crowded subtomograms and crowded tomograms.

The simulator feeds the tests, the demo, napari's sample data and the paper's
experiment (Gupta et al. 2022 used the simulator of Liu et al. 2020: crowded
32³ subtomograms of 10 classes, random rotations and shifts, missing wedge, CTF,
SNR 0.05 and 0.03). It is built to be *hard in the same ways*, so that a
classifier that works here has learnt shape, not a shortcut:

- every class is an assembly of Gaussian subunits (rings, rods, dimers,
  barrels, ...) with the **same total mass and radius of gyration**, so total
  intensity or size alone cannot tell the classes apart;
- each particle gets a uniform random 3D rotation and a sub-box shift, and
  neighbours (randomly posed particles of any class) crowd the box;
- the noise-free volume is filtered by a missing wedge (tilt axis Y, beam Z)
  and a contrast transfer function (CTF), with protein **dark** as in real
  tomograms;
- the reconstruction is band-limited (`lowpass_a`), and Gaussian noise, white
  inside the measured band (missing wedge × band limit: a tomogram has no
  information outside it, noise included), is added at a signal-to-noise ratio
  SNR = var(signal) / var(noise).

Everything is vectorised: densities are evaluated on the grid for all subunits
at once as sums of separable Gaussians (one batched matrix product), and the
filters are applied with batched real FFTs. See docs/simulator.md for the model,
its parameters and pictures. This module imports numpy, scipy and pandas only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_cryossl.io import (
    InputError,
    atomic_write,
    make_particle_table,
    write_mrc,
    write_particles,
)

__all__ = [
    "SimulationConfig",
    "SimulatedSubtomograms",
    "class_names",
    "class_templates",
    "clean_shapes_config",
    "contrast_transfer",
    "missing_wedge_mask",
    "simulate_subtomogram_details",
    "simulate_subtomograms",
    "simulate_to_disk",
    "simulate_tomogram",
]

# Subtomograms are simulated in chunks of this many; fixed so that results depend
# only on the seed (each chunk draws its noise from its own child seed).
_CHUNK = 32
# Tomograms are Fourier-filtered in slabs of this many Z planes (bounded temporaries).
_SLAB = 8
# Every class is scaled to the radius of gyration 0.35 D (D: nominal diameter). A uniform
# sphere of diameter D has 0.387 D; a little more compact lets elongated classes (rod,
# L-shape, helix) stay within about 1.3 D.
_RG_PER_DIAMETER = 0.35
# Subunit width for a subunit carrying the whole mass, as a fraction of Rg/sqrt(3)
# (the width of the single Gaussian with that Rg). Smaller keeps the arrangement visible.
_SUBUNIT_SHARPNESS = 0.8


@dataclass(frozen=True)
class SimulationConfig:
    """Physical and geometric settings of a simulation.

    Defaults follow the paper's data (Liu et al. 2020 simulator as used by Gupta et
    al. 2022): 10 classes, 32³ boxes, 10 Å voxels, ±60° tilt, 300 kV, SNR 0.05.

    Attributes:
        n_classes: number of structural classes (class numbers 1..n_classes).
        box_size: subtomogram edge in voxels.
        voxel_size: voxel edge in Å; sets the CTF's frequency scale and, with
            `particle_diameter_a`, the particle size in voxels.
        snr: var(signal) / var(noise), with the signal the noise-free volume after
            missing wedge, CTF and band limit. None (or inf) gives noise-free volumes.
        tilt_range_deg: the tilt series covers ±tilt_range_deg about the Y axis;
            90 means no missing wedge.
        defocus_um: defocus in µm, positive = underfocus (as usual in cryo-ET).
        defocus_spread_um: standard deviation of a per-subtomogram defocus change in
            µm (subtomograms from different tomograms); 0 = all the same.
        voltage_kv: acceleration voltage in kV (sets the electron wavelength).
        cs_mm: spherical aberration in mm.
        amplitude_contrast: fraction of amplitude contrast (0.07 for cryo samples).
        bfactor: B-factor of the CTF envelope exp(-B k²/4) in Å²; 0 = no envelope.
        lowpass_a: band limit of the reconstruction in Å (signal and noise alike), as
            tomograms are binned and filtered before subtomogram analysis and as Liu et
            al.'s simulator band-passes its subtomograms. Noise is white inside the
            measured band (wedge × band limit), so a narrower band puts more noise
            where the particles' signal is: it sets how hard a given SNR is. None = no
            band limit (white noise up to Nyquist).
        apply_ctf: False skips the CTF (the density is only negated and wedge-filtered).
        phase_flip: True applies |CTF| (a CTF-corrected tomogram by phase flipping);
            False keeps the contrast reversals of an uncorrected tomogram.
        particle_diameter_a: nominal particle diameter D in Å; every class has the
            radius of gyration 0.35 D (a uniform sphere of diameter D: 0.39 D) and
            the same total mass.
        max_shift_px: the particle centre moves by up to this many voxels along
            each axis from the box centre (uniform).
        n_neighbors: crowding neighbours tried per subtomogram (fewer are kept
            when they would overlap each other).
        neighbor_classes: "any" draws neighbours from all classes; "other" excludes
            the particle's own class, which leaks a little label information (a
            network that recognises a neighbour's class can rule that class out).
        neighbor_gap: neighbours sit at a centre distance between
            `neighbor_gap * (r_centre + r_neighbour)` and the point where they leave
            the box, r being each class's bounding radius; below 1 they touch.
        tomogram_gap: minimum centre distance between particles in a tomogram, as a
            fraction of the sum of their bounding radii.
        tomogram_snr_reference: "particles" scales the tomogram's noise so that a
            `box_size` box around a particle has the requested SNR on average (the
            same definition as the subtomograms); "volume" uses the variance of the
            signal over the whole tomogram.
        structures: None (default) for the synthetic Gaussian-subunit classes;
            otherwise real complexes (`napari_cryossl.structures`): "builtin" (ten
            complexes from 43 kDa to 2.3 MDa), a built-in name, an atomic model
            (PDB/mmCIF) or map (MRC) file ("model.cif#A,B" keeps chains A and B), a
            folder of them, or a sequence of these.
            Class k is the k-th structure (the first `n_classes` are used) and keeps
            its real mass and size, so `particle_diameter_a` then only sets the
            padding of the simulated boxes. A list is stored as a tuple.
        snr_reference: "set" (default) gives every subtomogram of a set the same
            noise level, var(noise) = mean_i var(signal_i) / snr, as in one tomogram;
            with real complexes of different sizes a small complex then sits in far
            more noise than its own signal (its own SNR is lower). "subtomogram" scales
            each box's noise to its own signal, var(noise_i) = var(signal_i) / snr, so
            every box has the requested SNR (the definition of Liu et al.'s simulator
            of the paper's data). Identical for classes of equal mass.
    """

    n_classes: int = 10
    box_size: int = 32
    voxel_size: float = 10.0
    snr: float | None = 0.05
    tilt_range_deg: float = 60.0
    defocus_um: float = 5.0
    defocus_spread_um: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    bfactor: float = 0.0
    lowpass_a: float | None = 25.0
    apply_ctf: bool = True
    phase_flip: bool = False
    particle_diameter_a: float = 150.0
    max_shift_px: float = 3.0
    n_neighbors: int = 4
    neighbor_classes: Literal["any", "other"] = "any"
    neighbor_gap: float = 0.85
    tomogram_gap: float = 0.9
    tomogram_snr_reference: Literal["particles", "volume"] = "particles"
    structures: str | tuple[str, ...] | None = None
    snr_reference: Literal["set", "subtomogram"] = "set"

    def __post_init__(self) -> None:
        problems = []
        if self.structures is not None and not isinstance(self.structures, str):
            object.__setattr__(self, "structures", tuple(str(s) for s in self.structures))
        if self.structures is not None:
            from napari_cryossl.structures import resolve_structures

            sources = resolve_structures(self.structures)  # InputError names a bad file
            if int(self.n_classes) == self.n_classes and self.n_classes > len(sources):
                problems.append(
                    f"n_classes is {self.n_classes} but only {len(sources)} structure(s) are "
                    "given; use fewer classes or more structures"
                )
        if int(self.n_classes) != self.n_classes or self.n_classes < 1:
            problems.append(f"n_classes must be a positive integer, got {self.n_classes}")
        if int(self.box_size) != self.box_size or self.box_size < 8:
            problems.append(f"box_size must be an integer >= 8, got {self.box_size}")
        for name in ("voxel_size", "voltage_kv", "particle_diameter_a"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive, got {value}")
        if self.snr is not None and not (self.snr > 0):
            problems.append(f"snr must be positive (or None for no noise), got {self.snr}")
        if not (0 < self.tilt_range_deg <= 90):
            problems.append(f"tilt_range_deg must be in (0, 90], got {self.tilt_range_deg}")
        for name in ("defocus_spread_um", "cs_mm", "bfactor", "max_shift_px"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0, got {value}")
        if not math.isfinite(self.defocus_um):
            problems.append(f"defocus_um must be finite, got {self.defocus_um}")
        if not (0 <= self.amplitude_contrast < 1):
            problems.append(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")
        if int(self.n_neighbors) != self.n_neighbors or self.n_neighbors < 0:
            problems.append(f"n_neighbors must be an integer >= 0, got {self.n_neighbors}")
        if self.lowpass_a is not None and not (
            math.isfinite(self.lowpass_a) and self.lowpass_a > 0
        ):
            problems.append(f"lowpass_a must be positive (or None), got {self.lowpass_a}")
        for name in ("neighbor_gap", "tomogram_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive, got {value}")
        if self.neighbor_classes not in ("any", "other"):
            problems.append(
                f"neighbor_classes must be 'any' or 'other', got {self.neighbor_classes!r}"
            )
        if self.snr_reference not in ("set", "subtomogram"):
            problems.append(
                f"snr_reference must be 'set' or 'subtomogram', got {self.snr_reference!r}"
            )
        if self.tomogram_snr_reference not in ("particles", "volume"):
            problems.append(
                "tomogram_snr_reference must be 'particles' or 'volume', "
                f"got {self.tomogram_snr_reference!r}"
            )
        if not problems and self.structures is None and self.particle_diameter_px > self.box_size:
            problems.append(
                f"particles of {self.particle_diameter_a:g} Å are "
                f"{self.particle_diameter_px:.1f} voxels at {self.voxel_size:g} Å/voxel and do "
                f"not fit a {self.box_size}-voxel box; use a larger box_size or voxel_size"
            )
        if problems:
            raise InputError("simulation settings: " + "; ".join(problems))

    @property
    def particle_diameter_px(self) -> float:
        """Nominal particle diameter in voxels (for picking and spacing)."""
        return self.particle_diameter_a / self.voxel_size

    @property
    def noisy(self) -> bool:
        """Whether noise is added (a finite SNR)."""
        return self.snr is not None and math.isfinite(self.snr)


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


# --------------------------------------------------------------------------- classes
# Each template gives subunit centres (K, 3) in xyz and relative masses (K,), at an
# arbitrary scale: `_assemblies` rescales them to a common mass and radius of gyration.


def _ring(k: int) -> tuple[np.ndarray, np.ndarray]:
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a), np.zeros(k)], axis=1), np.ones(k)


def _rod() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(4) - 1.5
    return np.stack([x, np.zeros(4), np.zeros(4)], axis=1), np.ones(4)


def _dimer() -> tuple[np.ndarray, np.ndarray]:
    return np.array([[-1.0, 0, 0], [1.0, 0, 0]]), np.ones(2)


def _barrel() -> tuple[np.ndarray, np.ndarray]:
    ring, _ = _ring(6)
    top = ring + [0, 0, 0.55]
    bottom = ring - [0, 0, 0.55]
    return np.concatenate([top, bottom]), np.ones(12)


def _tetrahedron() -> tuple[np.ndarray, np.ndarray]:
    return np.array([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]), np.ones(4)


def _lshape() -> tuple[np.ndarray, np.ndarray]:
    pts = [[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0], [0, 3, 0]]
    return np.array(pts), np.ones(6)


def _helix() -> tuple[np.ndarray, np.ndarray]:
    j = np.arange(9)
    a = np.deg2rad(100.0) * j
    return np.stack([np.cos(a), np.sin(a), 0.45 * j], axis=1), np.ones(9)


def _cube() -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    return pts, np.ones(8)


def _cross() -> tuple[np.ndarray, np.ndarray]:
    pts = [[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]
    return np.array(pts), np.array([1.6, 1, 1, 1, 1])


def _trimer() -> tuple[np.ndarray, np.ndarray]:
    return _ring(3)


def _tshape() -> tuple[np.ndarray, np.ndarray]:
    pts = [[-1.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, -1, 0], [0, -2, 0]]
    return np.array(pts), np.ones(5)


def _octahedron() -> tuple[np.ndarray, np.ndarray]:
    pts = np.concatenate([np.eye(3), -np.eye(3)])
    return pts, np.ones(6)


def _tripod() -> tuple[np.ndarray, np.ndarray]:
    a = 2 * np.pi * np.arange(3) / 3
    legs_in = np.stack([0.6 * np.cos(a), 0.6 * np.sin(a), np.full(3, -0.5)], axis=1)
    legs_out = np.stack([1.2 * np.cos(a), 1.2 * np.sin(a), np.full(3, -1.1)], axis=1)
    pts = np.concatenate([[[0.0, 0, 0.3]], legs_in, legs_out])
    return pts, np.array([2.5, 1, 1, 1, 0.8, 0.8, 0.8])


def _dumbbell() -> tuple[np.ndarray, np.ndarray]:
    pts = [[-1.2, 0, 0], [0, 0, 0], [1.2, 0, 0]]
    return np.array(pts), np.array([2.0, 0.5, 2.0])


def _heterotrimer() -> tuple[np.ndarray, np.ndarray]:
    a = np.deg2rad(110.0)
    pts = [[0.0, 0, 0], [1, 0, 0], [np.cos(a), np.sin(a), 0]]
    return np.array(pts), np.array([2.2, 1, 0.7])


def _cage() -> tuple[np.ndarray, np.ndarray]:
    g = (1 + 5**0.5) / 2
    pts = []
    for s1 in (-1, 1):
        for s2 in (-1, 1):
            pts += [[0, s1, s2 * g], [s1, s2 * g, 0], [s2 * g, 0, s1]]
    return np.array(pts, float), np.ones(12)


_TEMPLATES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "ring6": lambda: _ring(6),
    "rod": _rod,
    "dimer": _dimer,
    "barrel": _barrel,
    "tetrahedron": _tetrahedron,
    "lshape": _lshape,
    "helix": _helix,
    "cube": _cube,
    "cross": _cross,
    "trimer": _trimer,
    "tshape": _tshape,
    "octahedron": _octahedron,
    "tripod": _tripod,
    "dumbbell": _dumbbell,
    "heterotrimer": _heterotrimer,
    "cage12": _cage,
}


def _random_assembly(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic irregular assembly for class indices beyond the named templates.

    A self-avoiding random walk of 3-8 subunits with uneven masses, seeded by the
    class index, so class k is the same object in every run.
    """
    rng = np.random.default_rng([7919, index])
    k = int(rng.integers(3, 9))
    pts = [np.zeros(3)]
    while len(pts) < k:
        step = rng.normal(size=3)
        cand = pts[int(rng.integers(len(pts)))] + step / np.linalg.norm(step)
        if min(np.linalg.norm(cand - p) for p in pts) >= 0.9:
            pts.append(cand)
    return np.array(pts), rng.uniform(0.6, 1.4, size=k)


def class_names(
    n_classes: int, structures: str | tuple[str, ...] | list[str] | None = None
) -> list[str]:
    """Names of classes 1..n_classes ("ring6", "rod", ...); beyond 16 "assembly17", ...

    Args:
        n_classes: how many names.
        structures: a `SimulationConfig.structures` setting: the names are then the
            complexes' names ("ribosome80S", ...; a file's name without suffixes).

    Returns:
        One name per class number, in order (index 0 is class 1).
    """
    if int(n_classes) != n_classes or n_classes < 1:
        raise InputError(
            f"simulation settings: n_classes must be a positive integer, got {n_classes}"
        )
    if structures is not None:
        from napari_cryossl.structures import resolve_structures, structure_name

        sources = resolve_structures(structures)
        if n_classes > len(sources):
            raise InputError(
                f"simulation settings: n_classes is {n_classes} but only {len(sources)} "
                "structure(s) are given"
            )
        return [structure_name(src) for src in sources[: int(n_classes)]]
    names = list(_TEMPLATES)
    return [names[i] if i < len(names) else f"assembly{i + 1}" for i in range(int(n_classes))]


@dataclass(frozen=True)
class _Assembly:
    """One class, at the scale of a configuration (voxels)."""

    centres_xyz: np.ndarray  # (K, 3) about the centre of mass
    sigmas: np.ndarray  # (K,) Gaussian standard deviations
    weights: np.ndarray  # (K,) integrated masses, summing to `_class_mass(config)`
    radius: float  # bounding radius: max |centre| + 2 sigma


def _class_mass(config: SimulationConfig) -> float:
    """Total mass of every particle (arbitrary units): the voxel count of a sphere of
    the nominal diameter, so the mean density over that sphere is about 1, whatever
    the particle size.
    """
    return math.pi / 6 * config.particle_diameter_px**3


def _assemblies(config: SimulationConfig, n_classes: int | None = None) -> list[_Assembly]:
    """Scale every class to the same total mass and radius of gyration.

    The Rg of a sum of isotropic Gaussians is exact:
    Rg² = Σ w_i (|c_i - com|² + 3 s_i²) / Σ w_i, so scaling the centres by
    a = sqrt((Rg² - 3 <s²>) / <|c - com|²>) gives every class the target Rg. Subunit
    widths grow with the cube root of their mass (proteins have a nearly constant
    density), so a dimer has fatter subunits than a 12-mer of the same mass.
    """
    n = config.n_classes if n_classes is None else n_classes
    names = list(_TEMPLATES)
    mass = _class_mass(config)
    rg = _RG_PER_DIAMETER * config.particle_diameter_px
    sigma_whole = _SUBUNIT_SHARPNESS * rg / math.sqrt(3)
    out = []
    for i in range(n):
        pts, w = _TEMPLATES[names[i]]() if i < len(names) else _random_assembly(i + 1)
        pts = np.asarray(pts, float)
        w = np.asarray(w, float) / np.sum(w)
        sig = sigma_whole * np.cbrt(w)
        pts = pts - (w[:, None] * pts).sum(axis=0)
        spread = float((w * (pts**2).sum(axis=1)).sum())
        scale = math.sqrt(max(rg**2 - 3 * float((w * sig**2).sum()), 1e-6) / spread)
        pts = pts * scale
        radius = float(np.max(np.linalg.norm(pts, axis=1) + 2 * sig))
        out.append(_Assembly(pts, sig, w * mass, radius))
    return out


def _stack_assemblies(assemblies: list[_Assembly]) -> tuple[np.ndarray, ...]:
    """Pad the classes to a common subunit count (zero-mass subunits) for batching."""
    k = max(len(a.weights) for a in assemblies)
    n = len(assemblies)
    centres = np.zeros((n, k, 3))
    sigmas = np.ones((n, k))
    weights = np.zeros((n, k))
    for i, a in enumerate(assemblies):
        m = len(a.weights)
        centres[i, :m] = a.centres_xyz
        sigmas[i, :m] = a.sigmas
        weights[i, :m] = a.weights
    radii = np.array([a.radius for a in assemblies])
    return centres, sigmas, weights, radii


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
    from napari_cryossl.structures import PROTEIN_DENSITY, load_structure, resolve_structures

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


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    """Independent geometry and noise streams, so the SNR never changes the particles."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise InputError(f"simulation settings: seed must be an integer >= 0, got {seed!r}")
    return np.random.SeedSequence(int(seed)).spawn(2)


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotations of SO(3) as (n, 3, 3) matrices."""
    if n == 0:
        return np.zeros((0, 3, 3))
    return Rotation.random(n, rng).as_matrix().reshape(n, 3, 3)


def _random_directions(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


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
    n_per_class: int, config: SimulationConfig, seed: int = 0, *, workers: int | None = None
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

    for start in range(0, n, _CHUNK):
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
    return SimulatedSubtomograms(
        volumes=volumes,
        class_numbers=labels,
        rotations=plan["rotations"][:, 0].copy(),
        shifts_zyx=plan["shifts"].copy(),
        n_neighbors=(plan["keep"][:, 1:].sum(axis=1)).astype(np.int64),
        noise_std=noise_std,
        signal_variance=signal_variance,
    )


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


def clean_shapes_config(n_classes: int = 3, box_size: int = 16) -> SimulationConfig:
    """Settings of a sanity-check set: the class shapes alone, large in the box.

    Noise-free, no CTF, no missing wedge, no neighbours, shifts of at most 1 voxel, random
    3D orientations, 240 Å particles at 20 Å/voxel. Any working method must learn these;
    the tests and `benchmarks/bench_linear_probe.py` use it to check that learning is real.
    """
    return SimulationConfig(
        n_classes=n_classes,
        box_size=box_size,
        voxel_size=20.0,
        snr=None,
        particle_diameter_a=240.0,
        n_neighbors=0,
        max_shift_px=1.0,
        apply_ctf=False,
        tilt_range_deg=90.0,
    )


def simulate_subtomograms(
    n_per_class: int, config: SimulationConfig, seed: int = 0, *, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate crowded subtomograms of every class (see `simulate_subtomogram_details`).

    Args:
        n_per_class: subtomograms per class.
        config: simulation settings.
        seed: the output is a function of (n_per_class, config, seed).
        workers: threads for scipy.fft.

    Returns:
        ``(volumes, class_numbers)``: float32 (N, B, B, B) ZYX with protein dark, and
        int64 (N,) 1-based class numbers, N = n_per_class * n_classes in random order.
    """
    sim = simulate_subtomogram_details(n_per_class, config, seed, workers=workers)
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


# --------------------------------------------------------------------------- tomogram


def _place_particles(
    shape: tuple[int, int, int],
    classes: np.ndarray,
    radii: np.ndarray,
    config: SimulationConfig,
    rng: np.random.Generator,
    margin: float | None = None,
) -> np.ndarray:
    """Random sequential placement without heavy overlap; (n, 3) zyx centres.

    Centres stay `margin` (default half a nominal diameter) from the faces; two
    particles are at least `tomogram_gap * (r_i + r_j)` apart (r: class bounding radius).
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
        for cand in cands:
            tries += 1
            r = radii[classes[count]]
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
            f"{tuple(shape)}; use fewer particles or a larger tomogram"
        )
    return placed


def simulate_tomogram(
    shape_zyx: tuple[int, int, int],
    n_particles: int,
    config: SimulationConfig,
    seed: int = 0,
    *,
    workers: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate a crowded tomogram and its ground-truth particle table.

    Particles of balanced random classes are placed at random without heavy overlap
    (centre distance >= `tomogram_gap` × the sum of bounding radii, about a
    diameter), in uniform random orientations. The whole volume is then filtered
    by -(CTF × missing wedge × band limit) in Fourier space (padded, so nothing
    wraps around; one defocus for the whole tomogram) and Gaussian noise, white
    inside the same measured band, is added: with
    `tomogram_snr_reference="particles"` its variance is the mean over particles of
    the signal variance in a `box_size` box around each, divided by snr, so the
    subtomograms one extracts have the same SNR as `simulate_subtomograms`.

    Memory: about three float32 copies of the (padded) volume at the peak; the
    density is rendered particle by particle in small windows.

    Args:
        shape_zyx: tomogram shape in voxels, ZYX.
        n_particles: particles to place.
        config: simulation settings.
        seed: the output is a function of (shape, n_particles, config, seed).
        workers: threads for scipy.fft.

    Returns:
        ``(volume, table)``: float32 ZYX volume, protein dark; the particle table
        (`napari_cryossl.io.PARTICLE_COLUMNS`) with x, y, z centres in voxels,
        class_number and source "simulated".
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
    zyx = _place_particles(shape, classes, radii, config, rng, margin)
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
    return out, table


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


# --------------------------------------------------------------------------- files


def simulate_to_disk(
    out_dir: Path | str,
    config: SimulationConfig,
    *,
    n_per_class: int,
    tomogram_shape: tuple[int, int, int] | None = None,
    n_tomogram_particles: int | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write a simulated subtomogram set and/or a crowded tomogram.

    Layout of `out_dir`:

    - ``particles.star``: ``rlnImageName`` (paths relative to the STAR file) and
      ``rlnClassNumber`` of every subtomogram, one MRC each under ``subtomograms/``;
    - ``tomogram.mrc`` and ``tomogram_particles.star`` (``rlnCoordinateX/Y/Z`` in
      pixels, ``rlnTomoName``, ``rlnClassNumber``), when `tomogram_shape` is given;
    - ``simulation.json``: the settings, the seed and the class names.

    Args:
        out_dir: output folder (created).
        config: simulation settings.
        n_per_class: subtomograms per class; 0 writes no subtomogram set.
        tomogram_shape: ZYX shape of a tomogram to simulate, or None for none.
        n_tomogram_particles: particles in the tomogram (default 100).
        seed: both outputs are functions of the settings and the seed.
        workers: threads for scipy.fft.

    Returns:
        Paths by key: ``particles_star``, ``tomogram``, ``tomogram_particles_star``
        (those written) and ``metadata``.
    """
    out = Path(out_dir)
    _seeds(seed)  # bad seeds fail before anything is written
    if n_per_class == 0 and tomogram_shape is None:
        raise InputError(f"{out}: nothing to simulate (n_per_class is 0 and no tomogram_shape)")
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if n_per_class:
        volumes, labels = simulate_subtomograms(n_per_class, config, seed=seed, workers=workers)
        folder = out / "subtomograms"
        folder.mkdir(exist_ok=True)
        names = [os.path.abspath(folder / f"subtomo_{i + 1:06d}.mrc") for i in range(len(volumes))]
        # write_mrc is atomic (fsync per file): a few threads overlap the waits on disk
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(
                    lambda i: write_mrc(names[i], volumes[i], config.voxel_size), range(len(names))
                )
            )
        del volumes
        table = make_particle_table(None, class_number=labels, image_name=names, source="simulated")
        paths["particles_star"] = out / "particles.star"
        write_particles(table, paths["particles_star"], voxel_size=config.voxel_size)
    if tomogram_shape is not None:
        n_tomo = 100 if n_tomogram_particles is None else n_tomogram_particles
        volume, table = simulate_tomogram(
            tuple(tomogram_shape), n_tomo, config, seed=seed, workers=workers
        )
        paths["tomogram"] = out / "tomogram.mrc"
        write_mrc(paths["tomogram"], volume, config.voxel_size)
        del volume
        table["tomo_name"] = paths["tomogram"].name
        paths["tomogram_particles_star"] = out / "tomogram_particles.star"
        write_particles(
            table,
            paths["tomogram_particles_star"],
            voxel_size=config.voxel_size,
            tomogram_shape=tuple(tomogram_shape),
        )
    meta = {
        "config": asdict(config),
        "seed": seed,
        "class_names": {
            str(i + 1): name
            for i, name in enumerate(class_names(config.n_classes, config.structures))
        },
        "n_per_class": n_per_class,
        "tomogram_shape": list(tomogram_shape) if tomogram_shape is not None else None,
        "n_tomogram_particles": n_tomogram_particles,
    }
    paths["metadata"] = out / "simulation.json"
    with atomic_write(paths["metadata"]) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return paths
