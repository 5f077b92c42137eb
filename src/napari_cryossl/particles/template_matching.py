"""Template matching: find a known structure in a tomogram, with its orientation.

`match_template` scores every position of the tomogram and every rotation of a template
with a fast local normalised cross-correlation (FLCC; Roseman 2003), keeps the best
rotation per voxel, and picks the peaks, each with its score in noise units and its
orientation (RELION ZYZ angles). It answers "where is *this* structure?", where DoG
picking (`napari_cryossl.particles.picking`) answers "where are blobs of this size?".

Steps:

1. **Template.** A density (positive = protein, at the tomogram's voxel size): a map
   file, an atomic model or a built-in complex (`load_template`, through
   `napari_cryossl.simulate.structures`). It is centred on its centre of mass (so a pick is the
   particle's centre of mass, like the simulator's and RELION's centres) and cut to the
   smallest cube that holds it; its diameter, unless given, is that of the uniform ball
   with the same radius of gyration (``2 sqrt(5/3) Rg``).
2. **Rotations.** A deterministic near-uniform set of SO(3) (`rotation_set`): directions
   on a Fibonacci sphere times in-plane angles, the Hopf-fibration construction of
   RELION's and pytom's sets, about ``8π² / step³`` rotations. The default step is
   ``atan(resolution / diameter)``: the rim of the template then moves by about one
   resolution element from one rotation to the next. A template with C_n symmetry about
   its Z axis needs only 1/n of the in-plane angles (``symmetry=n``).
3. **Filters.** Each rotated template is filtered by the tomogram's missing wedge (a
   ±``tilt_range_deg`` tilt series about Y, beam along Z: the convention of
   `napari_cryossl.simulate.missing_wedge_mask`) and low-passed to ``resolution_px``
   (cosine edge); the tomogram gets the same low-pass.
4. **FLCC.** Under a mask M (a sphere holding the template, or the template's own shape
   dilated, rotated with it) the template is set to zero mean and unit norm, and
   ``cc(x) = Σ T'(m) f(x+m) / sqrt(Σ_M f² - (Σ_M f)² / N)``, the Pearson correlation of
   the template with the tomogram under the mask at every position. All sums are
   computed with FFTs (torch.fft): per rotation one forward transform of the template,
   pruned (the zero-padded template is transformed along one axis at a time, only where
   it is not zero), and one inverse. With the spherical mask the denominator does not
   depend on the rotation and is computed once per block.
5. **Noise units.** The correlation of one rotation at background positions is about
   Gaussian with a spread σ set by the template's and the tomogram's bandwidth. σ is
   estimated robustly (``1.4826 · MAD`` of every rotation's correlation on a fixed
   strided grid of voxels, so particles do not inflate it) and every score is
   ``max over rotations of cc / σ``: a threshold means the same on every tomogram.
6. **Automatic threshold** (as pytom-match-pick, Cruz-León et al. 2024): with
   ``n = voxels × rotations`` independent trials of a standard normal, the score that
   ``false_alarms`` of them exceed by chance is ``sqrt(2) erfcinv(2 false_alarms / n)``.
   Neighbouring voxels and rotations are correlated, so fewer trials are really
   independent and the threshold errs on the safe side (fewer false picks).
7. **Peaks.** Local maxima of the score in a cube of half-width ``min_distance / 2``,
   then greedy suppression within ``min_distance`` (`picking._greedy_min_distance`),
   best first; every pick carries the rotation that scored best there.

Memory and devices: the tomogram is processed in overlapping blocks (the core plus a
margin of half the template on every side, so a block's core is scored exactly as in the
whole volume) of at most ``max_block_voxels``; only one block, its transforms and a few
rotations at a time are in memory. torch.fft runs on the GPU when there is one (``device``)
and on the CPU otherwise.

Why written here and not taken from a library (checked 2026-12-02): pytom-match-pick
needs cupy and a CUDA GPU, so it cannot run on a CPU. pyTME (``pip install pytme``,
0.3.6) does install and run on the CPU here (a 64×128×128 search over 648 rotations took
7 s with its pyFFTW backend) but (a) it is GPL-2.0-only while this plugin is BSD-3-Clause,
(b) PyPI has only its source archive, whose C++ extension is compiled at install time
with ``-march=native`` (a napari user without a compiler cannot install it), with
pyFFTW, scikit-image, h5py and pydantic besides, and (c) its ``match_exhaustive`` offers
no progress callback or cancellation for the dock. torch (already a dependency) has fast
FFTs on the CPU and the GPU, so the search is about 200 lines here.

Orientations: a pick's rotation ``R`` (xyz) maps the template onto the particle,
``x_particle = R x_template`` (the simulator's convention). RELION's angles (rlnAngleRot,
rlnAngleTilt, rlnAnglePsi) describe the same pose with
``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).inv() == R`` (RELION's
matrix ``A`` rotates the reference into the particle), see `relion_angles`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from napari_cryossl.base.options import option
from napari_cryossl.io import InputError, make_particle_table

__all__ = [
    "ANGLE_COLUMNS",
    "MatchingCancelled",
    "iter_match_template",
    "TemplateMatchSettings",
    "auto_threshold",
    "default_angular_step",
    "load_template",
    "match_template",
    "relion_angles",
    "rotation_set",
    "rotations_from_relion",
    "template_diameter",
]

#: Columns added to the particle table: RELION ZYZ Euler angles in degrees.
ANGLE_COLUMNS = ("angle_rot", "angle_tilt", "angle_psi")
#: STAR labels of `ANGLE_COLUMNS`.
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
#: Default low-pass (voxels) is this fraction of the diameter, and at least `_MIN_RES`.
_RES_PER_DIAMETER = 1 / 8
_MIN_RES = 2.0
_MAD_TO_SIGMA = 1.4826
#: Statistics are taken on every k-th voxel of a global grid, at most this many per block.
_STAT_SAMPLES = 20_000


class MatchingCancelled(Exception):
    """Raised by `match_template` when its ``should_stop`` callback returns True."""


@dataclass
class TemplateMatchSettings:
    """What a user chooses for template matching (besides the template and the options it
    shares with DoG picking: threshold, minimum distance, polarity, max picks), declared
    once for the CLI (``cryossl pick --template``) and the dock."""

    angular_step: float | None = option(
        None,
        "angular step in degrees (default: atan(resolution / diameter); coarser is faster: "
        "the number of rotations grows as 1/step³)",
        minimum=1.0,
        maximum=90.0,
    )
    resolution_px: float | None = option(
        None,
        f"low-pass of template and tomogram in voxels (default: {_RES_PER_DIAMETER:g} of "
        f"the diameter, at least {_MIN_RES:g})",
        minimum=_MIN_RES,
        flag="--resolution-px",
    )
    tilt_range_deg: float = option(
        60.0,
        "± tilt range of the tilt series (missing wedge about Y); 90: no missing wedge",
        unit="degrees",
        minimum=1.0,
        maximum=90.0,
        flag="--tilt-range",
    )
    false_alarms: float = option(
        1.0,
        "expected false picks per tomogram at the automatic threshold (higher finds more)",
        minimum=1e-6,
    )
    mask: str = option(
        "sphere",
        "mask of the local correlation: sphere (fast) or template (its shape, 3x slower)",
        choices=("sphere", "template"),
    )
    symmetry: int = option(1, "cyclic symmetry C_n of the template about its Z axis", minimum=1)
    device: str = option("auto", "auto (the GPU when CUDA is available), cpu, cuda or cuda:N")


# ------------------------------------------------------------------------------ rotations


def rotation_set(angular_step: float, symmetry: int = 1) -> np.ndarray:
    """A deterministic near-uniform set of rotations, about ``8π²/step³ / symmetry``.

    Directions on a Fibonacci sphere (about ``4π/step²``, nearly equal areas) times
    in-plane angles ``ψ`` spaced by about ``step`` over ``[0, 360°/symmetry)``:
    ``R = Rz(φ) Ry(θ) Rz(ψ)``. The first rotation is the identity's direction (θ near 0).

    Args:
        angular_step: spacing in degrees (> 0).
        symmetry: n of a C_n symmetry of the template about its Z axis.

    Returns:
        float64 (n, 3, 3) rotation matrices (xyz), ``x_particle = R x_template``.
    """
    from scipy.spatial.transform import Rotation

    step = math.radians(float(angular_step))
    if not (step > 0 and math.isfinite(step)):
        raise InputError(f"template matching: angular step must be > 0, got {angular_step}")
    if int(symmetry) != symmetry or symmetry < 1:
        raise InputError(f"template matching: symmetry must be an integer >= 1, got {symmetry}")
    n_dir = max(1, round(4 * math.pi / step**2))
    i = np.arange(n_dir) + 0.5
    theta = np.arccos(np.clip(1 - 2 * i / n_dir, -1.0, 1.0))
    phi = np.mod(i * math.pi * (3 - math.sqrt(5)), 2 * math.pi)
    span = 2 * math.pi / int(symmetry)
    n_psi = max(1, math.ceil(span / step - 1e-9))
    psi = np.arange(n_psi) * span / n_psi
    angles = np.stack([np.repeat(phi, n_psi), np.repeat(theta, n_psi), np.tile(psi, n_dir)], axis=1)
    return Rotation.from_euler("ZYZ", angles).as_matrix()


def default_angular_step(diameter_px: float, resolution_px: float) -> float:
    """``atan(resolution / diameter)`` in degrees (at most 90)."""
    return min(90.0, math.degrees(math.atan2(float(resolution_px), float(diameter_px))))


def relion_angles(rotations: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) in degrees of poses ``x_particle = R x_template``; (n, 3)."""
    from scipy.spatial.transform import Rotation

    mats = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if len(mats) == 0:
        return np.zeros((0, 3))
    return Rotation.from_matrix(np.transpose(mats, (0, 2, 1))).as_euler("ZYZ", degrees=True)


def rotations_from_relion(angles) -> np.ndarray:
    """The poses (n, 3, 3) of RELION (rot, tilt, psi) angles in degrees; `relion_angles`'s
    inverse."""
    from scipy.spatial.transform import Rotation

    a = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_euler("ZYZ", a, degrees=True).inv().as_matrix()


def auto_threshold(n_trials: float, false_alarms: float = 1.0) -> float:
    """Score (noise units) exceeded ``false_alarms`` times by chance in ``n_trials`` standard
    normal trials: ``sqrt(2) erfcinv(2 false_alarms / n_trials)``."""
    from scipy.special import erfcinv

    p = min(1.0, 2.0 * float(false_alarms) / max(float(n_trials), 1.0))
    return float(math.sqrt(2.0) * erfcinv(p))


# ------------------------------------------------------------------------------ templates


def load_template(source, voxel_size: float, *, resolution_a: float | None = None) -> np.ndarray:
    """A template density at a tomogram's voxel size, positive = protein.

    Args:
        source: a built-in complex name ("TRiC", "apoferritin", ...; see
            `napari_cryossl.simulate.structures.builtin_structures`), an atomic model
            (.pdb/.cif[.gz]) or a density map (.mrc/.map[.gz]), resampled to
            `voxel_size` by `napari_cryossl.simulate.structures.load_structure`; or a ZYX array
            already at that voxel size (returned as float32).
        voxel_size: Å per voxel of the tomogram.
        resolution_a: Gaussian low-pass in Å (default: twice the voxel size).

    Raises:
        InputError: a missing or unreadable file, an unknown name.
    """
    if isinstance(source, np.ndarray):
        return np.asarray(source, dtype=np.float32)
    from napari_cryossl.simulate.structures import load_structure

    item = load_structure(source, voxel_size, resolution=resolution_a)
    return np.asarray(item.density, dtype=np.float32)


def template_diameter(template: np.ndarray) -> float:
    """Diameter (voxels) of the uniform ball with the template's radius of gyration,
    ``2 sqrt(5/3) Rg`` (its positive density about its centre of mass)."""
    d = np.clip(np.asarray(template, dtype=np.float64), 0, None)
    total = d.sum()
    if not total > 0:
        raise InputError("template matching: the template has no positive density")
    grids = np.indices(d.shape, dtype=np.float64)
    com = [(g * d).sum() / total for g in grids]
    rg2 = sum(((g - c) ** 2 * d).sum() for g, c in zip(grids, com, strict=True)) / total
    return float(2.0 * math.sqrt(5.0 / 3.0 * rg2))


@dataclass
class _Template:
    box: np.ndarray  # float32 (t, t, t), centre of mass at the centre, low-passed
    half: int  # t = 2 half + 1
    diameter: float
    mask_radius: float
    shape_mask: np.ndarray  # float32 (t, t, t), template-shaped mask (dilated)


def _prepare_template(template, diameter_px, resolution_px) -> _Template:
    arr = np.asarray(template, dtype=np.float32)
    if arr.ndim != 3:
        raise InputError(f"template matching: the template must be 3D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("template matching: the template has non-finite values")
    pos = np.clip(arr.astype(np.float64), 0, None)
    total = pos.sum()
    if not total > 0:
        raise InputError("template matching: the template has no positive density")
    grids = np.indices(arr.shape, dtype=np.float64)
    com = np.array([(g * pos).sum() / total for g in grids])
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, com, strict=True)))
    order = np.argsort(r.ravel())
    cum = np.cumsum(pos.ravel()[order])
    support = float(r.ravel()[order[min(int(np.searchsorted(cum, 0.995 * total)), r.size - 1)]])
    diameter = template_diameter(arr) if diameter_px is None else float(diameter_px)
    mask_radius = support + 0.5 * resolution_px + 1.0
    half = math.ceil(mask_radius + resolution_px + 1)
    t = 2 * half + 1
    # Resample into the centred box (sub-voxel shift of the centre of mass to the centre).
    coords = np.indices((t, t, t), dtype=np.float64) - half + com.reshape(3, 1, 1, 1)
    box = ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0)
    box = _lowpass_real(box.astype(np.float32), resolution_px)
    thresh = 0.1 * float(box.max())
    shape_mask = ndimage.binary_dilation(
        box > thresh, iterations=max(1, round(resolution_px / 2))
    ).astype(np.float32)
    return _Template(box.astype(np.float32), half, diameter, mask_radius, shape_mask)


def _lowpass_real(box: np.ndarray, resolution_px: float) -> np.ndarray:
    spec = np.fft.rfftn(box)
    spec *= _lowpass_filter(box.shape, resolution_px)
    return np.fft.irfftn(spec, s=box.shape).astype(np.float32)


def _frequencies(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    return kz, ky, kx


def _lowpass_filter(shape, resolution_px: float) -> np.ndarray:
    """1 below 0.8/resolution, cos² edge to 0 at 1/resolution (cycles/voxel), rfft grid."""
    kz, ky, kx = _frequencies(shape)
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    cutoff = 1.0 / resolution_px
    t = np.clip((k - 0.8 * cutoff) / (0.2 * cutoff), 0.0, 1.0)
    return (np.cos(0.5 * np.pi * t) ** 2).astype(np.float32)


def _wedge_filter(shape, tilt_range_deg: float) -> np.ndarray:
    """Measured region of a ±tilt series about Y (beam along Z): |kz| cos θ <= |kx| sin θ."""
    kz, ky, kx = _frequencies(shape)
    theta = math.radians(tilt_range_deg)
    keep = np.abs(kz) * math.cos(theta) <= np.abs(kx) * math.sin(theta) + 1e-12
    keep = np.broadcast_to(keep, (len(kz), ky.shape[1], kx.shape[2])).copy()
    keep[0, 0, 0] = True
    return keep.astype(np.float32)


# ------------------------------------------------------------------------------ matching


def match_template(
    volume,
    template,
    *,
    diameter_px: float | None = None,
    threshold: float | None = None,
    false_alarms: float = 1.0,
    min_distance_px: float | None = None,
    polarity: str = "dark",
    max_particles: int | None = None,
    angular_step: float | None = None,
    resolution_px: float | None = None,
    tilt_range_deg: float = 60.0,
    mask: str = "sphere",
    symmetry: int = 1,
    exclude_border: bool | float = True,
    device: str = "auto",
    max_block_voxels: int = 1 << 24,
    rotations: np.ndarray | None = None,
    cpu_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """Find copies of `template` in a tomogram (FLCC over rotations; module docstring).

    Args:
        volume: ZYX tomogram: a (memory-mapped) array or a `Tomogram`; read block by block.
        template: ZYX density at the tomogram's voxel size, positive = protein
            (`load_template`).
        diameter_px: particle diameter in voxels; default from the template
            (`template_diameter`). Sets the default angular step, minimum distance and
            border.
        threshold: minimum score in noise units; None: `auto_threshold` from
            `false_alarms`.
        false_alarms: expected false picks in the whole tomogram at the automatic threshold.
        min_distance_px: minimum distance between picks (default 0.7 x the diameter).
        polarity: "dark" (protein dark, cryo-ET) or "bright".
        max_particles: keep at most this many (best first).
        angular_step: degrees; default `default_angular_step` (diameter, resolution).
        resolution_px: low-pass in voxels (default diameter / 8, at least 2).
        tilt_range_deg: the missing wedge of a ±tilt series about Y; 90: none.
        mask: "sphere" or "template" (the template's shape, dilated, rotated with it).
        symmetry: C_n symmetry of the template about its Z axis.
        exclude_border: drop picks closer than this to a face: True = a quarter diameter.
        device: "auto", "cpu", "cuda" or "cuda:N".
        max_block_voxels: largest block (core + margins) transformed at once.
        rotations: (n, 3, 3) poses to search instead of `rotation_set` (tests).
        cpu_threads: torch threads on the CPU during the search (default: torch's own).
            On a machine shared with other busy processes, 1 can be several times faster
            (measured 13 ms against 120 ms per rotation of a 0.5 M-voxel block on a 2-core
            CPU running other jobs).
        progress: called as ``progress(done, total)`` after each batch of rotations of
            each block.
        should_stop: polled after each batch; True stops with `MatchingCancelled`.

    Returns:
        Particle table (`napari_cryossl.io.PARTICLE_COLUMNS`, source "auto", score in
        noise units, best first) plus `ANGLE_COLUMNS` (RELION rot, tilt, psi in degrees)
        and ``cc`` (the raw correlation); ``attrs`` holds the threshold used, the noise σ
        and the number of rotations.

    Raises:
        InputError: bad options, a template without density or larger than the tomogram,
            non-finite voxels.
    """
    from napari_cryossl.base.status import with_callbacks

    settings = {
        k: v
        for k, v in locals().items()
        if k not in ("volume", "template", "progress", "should_stop", "with_callbacks")
    }
    name = getattr(volume, "path", None) or "tomogram"
    return with_callbacks(
        iter_match_template(volume, template, **settings),
        progress=progress,
        should_stop=should_stop,
        stopped=MatchingCancelled(f"{name}: template matching stopped"),
    )


def iter_match_template(volume, template, *, cpu_threads: int | None = None, **settings):
    """`match_template` as a generator: yields a ``status.Progress`` (stage "template
    matching", one step per batch of rotations of each block) and returns the table;
    closing it stops the search between batches. Takes `match_template`'s settings
    (the same defaults) except the callbacks."""
    import inspect

    import torch

    defaults = {
        k: p.default
        for k, p in inspect.signature(match_template).parameters.items()
        if p.kind is p.KEYWORD_ONLY and k not in ("progress", "should_stop", "cpu_threads")
    }
    settings = {**defaults, **settings}
    if cpu_threads is None:
        return (yield from _match_template(volume, template, **settings))
    previous = torch.get_num_threads()
    torch.set_num_threads(int(cpu_threads))
    try:
        return (yield from _match_template(volume, template, **settings))
    finally:
        torch.set_num_threads(previous)


def _match_template(
    volume,
    template,
    *,
    diameter_px,
    threshold,
    false_alarms,
    min_distance_px,
    polarity,
    max_particles,
    angular_step,
    resolution_px,
    tilt_range_deg,
    mask,
    symmetry,
    exclude_border,
    device,
    max_block_voxels,
    rotations,
):
    import time

    import torch

    from napari_cryossl.base.status import Progress

    t0 = time.perf_counter()

    from napari_cryossl.particles.extract import _MappedPages, _volume_and_name
    from napari_cryossl.particles.picking import (
        MIN_DISTANCE_FRACTION,
        _check_polarity,
        _greedy_min_distance,
        _read_block,
    )

    data, name = _volume_and_name(volume)
    _check_polarity(polarity, name)
    if mask not in ("sphere", "template"):
        raise InputError(f"{name}: mask must be 'sphere' or 'template', got {mask!r}")
    if not (0 < float(tilt_range_deg) <= 90):
        raise InputError(f"{name}: tilt range must be in (0, 90] degrees, got {tilt_range_deg}")
    if not (np.isfinite(false_alarms) and false_alarms > 0):
        raise InputError(f"{name}: false_alarms must be > 0, got {false_alarms}")
    if max_particles is not None and (int(max_particles) != max_particles or max_particles < 1):
        raise InputError(f"{name}: max_particles must be a positive integer, got {max_particles}")
    if threshold is not None and not np.isfinite(threshold):
        raise InputError(f"{name}: threshold must be a finite number, got {threshold}")
    if diameter_px is not None and not (np.isfinite(diameter_px) and diameter_px > 0):
        raise InputError(f"{name}: particle diameter must be positive, got {diameter_px}")
    if np.ndim(template) != 3:
        raise InputError(
            f"template matching: the template must be 3D, got shape {np.shape(template)}"
        )
    first_diameter = template_diameter(template) if diameter_px is None else float(diameter_px)
    if resolution_px is None:
        resolution_px = max(_MIN_RES, _RES_PER_DIAMETER * first_diameter)
    if not (np.isfinite(resolution_px) and resolution_px >= _MIN_RES):
        raise InputError(f"{name}: resolution must be >= {_MIN_RES:g} voxels, got {resolution_px}")
    tpl = _prepare_template(template, diameter_px, float(resolution_px))
    diameter = tpl.diameter
    if rotations is None:
        step = (
            angular_step
            if angular_step is not None
            else default_angular_step(diameter, resolution_px)
        )
        rotations = rotation_set(step, symmetry)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if min_distance_px is None:
        min_distance_px = MIN_DISTANCE_FRACTION * diameter
    if not (np.isfinite(min_distance_px) and min_distance_px >= 0):
        raise InputError(f"{name}: min_distance_px must be >= 0, got {min_distance_px}")
    border = _border(exclude_border, diameter, name)

    shape = tuple(int(n) for n in data.shape)
    half = tpl.half
    if any(n < 2 for n in shape):
        raise InputError(f"{name}: the tomogram is too small ({shape})")
    dev = _device(device)
    sign = -1.0 if polarity == "dark" else 1.0

    # Block layout: cores of edge `core` along each axis with a margin of `half`.
    core = _core_size(shape, half, max_block_voxels)
    starts = [range(0, n, c) for n, c in zip(shape, core, strict=True)]
    blocks = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    fft_shape = tuple(_fast_len(min(c, n) + 2 * half) for c, n in zip(core, shape, strict=True))
    block_bytes = math.prod(fft_shape) * 4
    batch = _batch_size(dev, block_bytes, len(rotations))
    n_batches = math.ceil(len(rotations) / batch)
    total = len(blocks) * n_batches
    stride = max(1, math.ceil((math.prod(shape) / _STAT_SAMPLES / max(len(blocks), 1)) ** (1 / 3)))

    # Per-template tensors on the device.
    t = 2 * half + 1
    box_filter = _lowpass_filter((t, t, t), resolution_px) * _wedge_filter(
        (t, t, t), tilt_range_deg
    )
    tpl_box = torch.from_numpy(tpl.box).to(dev)
    tpl_shape_mask = torch.from_numpy(tpl.shape_mask).to(dev)
    box_filter_t = torch.from_numpy(box_filter).to(dev)
    grid = _base_grid(half, dev)
    sphere = (grid.norm(dim=-1) * half <= tpl.mask_radius).to(torch.float32)  # (t, t, t)
    rot_t = torch.from_numpy(rotations.astype(np.float32)).to(dev)

    background = _background(data, name)
    pages = _MappedPages(data)
    cand_zyx: list[np.ndarray] = []
    cand_cc: list[np.ndarray] = []
    cand_rot: list[np.ndarray] = []
    sigma2_sum = 0.0
    sigma2_count = 0
    done = 0
    for z0, y0, x0 in blocks:
        core_lo = np.array([z0, y0, x0])
        core_hi = np.minimum(core_lo + np.array(core), shape)
        lo = np.maximum(core_lo - half, 0)
        hi = np.minimum(core_hi + half, shape)
        raw = _read_block(
            data,
            tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)),
            name,
            list(zip(lo, hi, strict=True)),
            pages,
        )
        # The block sits in the FFT grid so that the core starts at `half`; the rest is
        # background (the volume's faces, and the zero padding of a fast FFT length).
        padded = np.full(fft_shape, background, dtype=np.float32)
        offset = half - (core_lo - lo)  # where `lo` lands in the grid
        sl = tuple(slice(o, o + (b - a)) for o, a, b in zip(offset, lo, hi, strict=True))
        padded[sl] = raw
        del raw
        f = torch.from_numpy(padded).to(dev)
        f = (f - float(background)) * sign
        lp = torch.from_numpy(_lowpass_filter(fft_shape, resolution_px)).to(dev)
        spec = torch.fft.rfftn(f) * lp
        f = torch.fft.irfftn(spec, s=fft_shape)
        spec_sq = torch.fft.rfftn(f * f)
        del f
        core_shape = tuple(int(b - a) for a, b in zip(core_lo, core_hi, strict=True))
        # Correlation maps are in the "corner" frame: value at x is the template centred
        # at x + half; the core's centres half..half+core-1 are at x = 0..core-1.
        crop = tuple(slice(0, c) for c in core_shape)
        gsl = tuple(
            slice((-(-a // stride) * stride) - a, c, stride)
            for a, c in zip(core_lo, core_shape, strict=True)
        )
        denom = None
        if mask == "sphere":
            denom = _denominator(sphere[None], spec, spec_sq, fft_shape, crop)[0]
        best = torch.full(core_shape, -2.0, device=dev)
        best_rot = torch.zeros(core_shape, dtype=torch.int32, device=dev)
        for b0 in range(0, len(rotations), batch):
            rots = rot_t[b0 : b0 + batch]
            rotated = _rotate(tpl_box, rots, grid)  # (B, t, t, t)
            filtered = torch.fft.irfftn(
                torch.fft.rfftn(rotated, dim=(1, 2, 3)) * box_filter_t, s=(t, t, t), dim=(1, 2, 3)
            )
            if mask == "sphere":
                m = sphere.expand_as(filtered)
                d = denom
            else:
                m = (_rotate(tpl_shape_mask, rots, grid) > 0.5).to(torch.float32)
                d = _denominator(m, spec, spec_sq, fft_shape, crop)
            normed = _normalise_under_mask(filtered, m)
            tspec = _pruned_rfftn(normed, fft_shape)
            cc = torch.fft.irfftn(torch.conj(tspec) * spec[None], s=fft_shape, dim=(1, 2, 3))
            cc = cc[(slice(None), *crop)] / d
            sample = cc[(slice(None), *gsl)].reshape(len(rots), -1)
            if sample.shape[1]:
                med = sample.median(dim=1, keepdim=True).values
                mad = (sample - med).abs().median(dim=1).values * _MAD_TO_SIGMA
                sigma2_sum += float((mad.double() ** 2).sum()) * sample.shape[1]
                sigma2_count += int(sample.numel())
            value, index = cc.max(dim=0)
            better = value > best
            best = torch.maximum(value, best)
            best_rot = torch.where(better, index.to(torch.int32) + b0, best_rot)
            del cc, tspec, normed, filtered, rotated
            done += 1
            yield Progress(
                stage="template matching", step=done, n_steps=total, unit="rotation batch",
                elapsed_s=time.perf_counter() - t0,
            )
        del spec, spec_sq, denom
        score = best.cpu().numpy()
        rot_idx = best_rot.cpu().numpy()
        nms_half = max(1, int(min_distance_px // 2))
        local_max = score == ndimage.maximum_filter(score, size=2 * nms_half + 1, mode="nearest")
        peaks = np.argwhere(local_max & (score > 0))
        if len(peaks):
            cand_cc.append(score[tuple(peaks.T)])
            cand_rot.append(rot_idx[tuple(peaks.T)])
            cand_zyx.append(peaks + core_lo)

    sigma = math.sqrt(sigma2_sum / sigma2_count) if sigma2_count else 0.0
    n_trials = float(math.prod(shape)) * len(rotations)
    used = auto_threshold(n_trials, false_alarms) if threshold is None else float(threshold)
    attrs = {
        "threshold": used,
        "sigma": sigma,
        "n_rotations": len(rotations),
        "diameter_px": diameter,
        "resolution_px": float(resolution_px),
    }
    if not sigma > 0 or not cand_zyx:
        return _table(np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros((0, 3, 3)), attrs)
    zyx = np.concatenate(cand_zyx).astype(np.float64)
    cc = np.concatenate(cand_cc).astype(np.float64)
    rot = np.concatenate(cand_rot).astype(np.int64)
    score = cc / sigma
    keep = score >= used
    if border > 0:
        upper = np.array(shape, dtype=np.float64) - 1.0 - border
        keep &= np.all((zyx >= border) & (zyx <= upper), axis=1)
    zyx, cc, rot, score = zyx[keep], cc[keep], rot[keep], score[keep]
    order = np.lexsort((zyx[:, 2], zyx[:, 1], zyx[:, 0], -score))
    zyx, cc, rot, score = zyx[order], cc[order], rot[order], score[order]
    kept = _greedy_min_distance(zyx, min_distance_px)
    if max_particles is not None:
        kept = kept[:max_particles]
    return _table(zyx[kept], score[kept], cc[kept], rotations[rot[kept]], attrs)


def _table(zyx, score, cc, rotations, attrs) -> pd.DataFrame:
    table = make_particle_table(zyx, source="auto", score=score)
    angles = relion_angles(rotations)
    for i, col in enumerate(ANGLE_COLUMNS):
        table[col] = angles[:, i] if len(angles) else np.zeros(0)
    table["cc"] = np.asarray(cc, dtype=np.float64)
    table.attrs.update(attrs)
    return table


def _border(exclude_border, diameter: float, name: str) -> float:
    if exclude_border is True:
        return diameter / 4.0
    if exclude_border is False or exclude_border is None:
        return 0.0
    border = float(exclude_border)
    if not (np.isfinite(border) and border >= 0):
        raise InputError(
            f"{name}: exclude_border must be True, False or >= 0, got {exclude_border}"
        )
    return border


def _device(spec: str):
    import torch

    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"template matching: unknown device {spec!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("template matching: device 'cuda' asked for but CUDA is not available")
    return dev


def _fast_len(n: int) -> int:
    from scipy import fft as sfft

    return int(sfft.next_fast_len(int(n), real=True))


def _core_size(shape, half: int, max_block_voxels: int) -> tuple[int, int, int]:
    """Largest cores (halving the longest axis first) whose blocks fit `max_block_voxels`."""
    core = list(shape)
    while math.prod(_fast_len(c + 2 * half) for c in core) > max_block_voxels:
        i = int(np.argmax(core))
        if core[i] <= max(8, half):
            break
        core[i] = math.ceil(core[i] / 2)
    return tuple(core)


def _batch_size(dev, block_bytes: int, n_rot: int) -> int:
    """Rotations per batch: a few block-sized buffers each, within a memory budget."""
    import torch

    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free // 3
    else:
        budget = 1 << 30
    per = 6 * block_bytes
    return int(max(1, min(n_rot, 16 if dev.type == "cuda" else 2, budget // max(per, 1))))


def _background(data, name: str) -> float:
    from napari_cryossl.particles.picking import _background_level

    return _background_level(data, name)


def _base_grid(half: int, dev):
    """(t, t, t, 3) xyz offsets from the box centre, divided by `half` (grid_sample units)."""
    import torch

    r = torch.arange(-half, half + 1, dtype=torch.float32, device=dev) / half
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def _rotate(box, rots, grid):
    """Rotated copies of a (t, t, t) box: out(p) = box(Rᵀ p), trilinear; (B, t, t, t)."""
    import torch

    b = len(rots)
    # q = Rᵀ p for row vectors p: q = p @ R
    q = torch.matmul(grid.reshape(1, -1, 3), rots).reshape(b, *grid.shape)
    out = torch.nn.functional.grid_sample(
        box.expand(b, 1, *box.shape),
        q,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[:, 0]


def _normalise_under_mask(box, m):
    """Zero mean and unit norm under the (binary) mask, zero outside; (B, t, t, t)."""
    import torch

    n = m.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (box * m).sum(dim=(1, 2, 3), keepdim=True) / n
    centred = (box - mean) * m
    norm = torch.sqrt((centred * centred).sum(dim=(1, 2, 3), keepdim=True)).clamp_min(1e-12)
    return centred / norm


def _pruned_rfftn(boxes, fft_shape):
    """rfftn of (B, t, t, t) boxes zero-padded (at the end) to `fft_shape`, one axis at a
    time so that the transforms of the all-zero lines are skipped."""
    import torch

    nz, ny, nx = fft_shape
    out = torch.fft.rfft(boxes, n=nx, dim=3)
    out = torch.fft.fft(out, n=ny, dim=2)
    return torch.fft.fft(out, n=nz, dim=1)


def _denominator(masks, spec, spec_sq, fft_shape, crop):
    """sqrt(Σ_M f² - (Σ_M f)² / N) in the corner frame, cropped to the core; (B, ...)."""
    import torch

    n = masks.sum(dim=(1, 2, 3)).clamp_min(1.0).view(-1, 1, 1, 1)
    mspec = torch.conj(_pruned_rfftn(masks, fft_shape))
    s1 = torch.fft.irfftn(mspec * spec[None], s=fft_shape, dim=(1, 2, 3))
    s1 = s1[(slice(None), *crop)]
    s2 = torch.fft.irfftn(mspec * spec_sq[None], s=fft_shape, dim=(1, 2, 3))
    s2 = s2[(slice(None), *crop)]
    var = s2 - s1 * s1 / n
    # Flat regions (constant padding beyond the faces) would divide by ~0: floor the
    # variance at a tenth of the block's typical one.
    typical = var[:, ::4, ::4, ::4].flatten(1).median(dim=1).values
    floor = 0.1 * typical.clamp_min(1e-20).view(-1, 1, 1, 1)
    return torch.sqrt(torch.maximum(var, floor))
