"""The synthetic classes: assemblies of Gaussian subunits with the same mass and size.

Every class (ring, rod, dimer, barrel, ..., then deterministic random assemblies beyond
the named ones) is scaled to the same total mass and radius of gyration, so total
intensity or size alone cannot tell the classes apart. `class_names` names them, or the
real complexes of `SimulationConfig.structures`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_cryossl.io import InputError
from napari_cryossl.simulate.config import SimulationConfig

# Every class is scaled to the radius of gyration 0.35 D (D: nominal diameter). A uniform
# sphere of diameter D has 0.387 D; a little more compact lets elongated classes (rod,
# L-shape, helix) stay within about 1.3 D.
_RG_PER_DIAMETER = 0.35
# Subunit width for a subunit carrying the whole mass, as a fraction of Rg/sqrt(3)
# (the width of the single Gaussian with that Rg). Smaller keeps the arrangement visible.
_SUBUNIT_SHARPNESS = 0.8


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
        from napari_cryossl.simulate.structures import resolve_structures, structure_name

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
