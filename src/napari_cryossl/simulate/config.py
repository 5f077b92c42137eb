"""Simulation settings: `SimulationConfig`, `clean_shapes_config` and the seed streams.

Every other module of `napari_cryossl.simulate` takes a `SimulationConfig`; it checks
its settings when built and names every problem in one `InputError`. `_seeds` splits a
seed into the geometry and noise streams, so the SNR never changes the particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from napari_cryossl.base.options import option
from napari_cryossl.io import InputError

# Subtomograms are simulated in chunks of this many; fixed so that results depend
# only on the seed (each chunk draws its noise from its own child seed).
_CHUNK = 32


#: The settings of clutter in tomograms (`cryossl simulate` adds their flags).
CLUTTER_OPTIONS = (
    "clutter",
    "gold_per_um2",
    "vesicles_per_um2",
    "membranes_per_um2",
    "ice_per_um2",
    "actin_per_um2",
    "microtubules_per_um2",
    "carbon_edge",
)


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
            otherwise real complexes (`napari_cryossl.simulate.structures`): "builtin" (ten
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
        clutter: True (default) adds clutter to simulated tomograms
            (`simulate.clutter`: gold fiducials, vesicles, flat membranes, ice
            contamination, actin-like filaments, microtubule-like tubes and, with
            `carbon_edge`, a carbon film), rendered before the optics; subtomogram sets
            never hold clutter.
        gold_per_um2, vesicles_per_um2, membranes_per_um2, ice_per_um2, actin_per_um2,
            microtubules_per_um2: expected number of each kind per µm² of the
            tomogram's XY field of view (the count is within one of it).
        carbon_edge: a carbon support film beyond a straight edge at the bottom or top of
            the tomogram (needs `clutter`).
    """

    n_classes: int = option(
        10,
        "number of structural classes (default 10, or the number of --structures)",
        minimum=1,
        flag="--classes",
    )
    box_size: int = option(32, "subtomogram box", unit="voxels", minimum=8)
    voxel_size: float = option(10.0, "voxel size", unit="Å", minimum=0.0)
    snr: float | None = option(0.05, "var(signal)/var(noise); inf: noise-free", minimum=0.0)
    tilt_range_deg: float = option(
        60.0,
        "± tilt range; 90: no missing wedge",
        unit="degrees",
        minimum=0.0,
        maximum=90.0,
        flag="--tilt-range",
    )
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
    structures: str | tuple[str, ...] | None = option(
        None,
        "real complexes instead of the synthetic shapes: 'builtin' (ten complexes, "
        "43 kDa-2.3 MDa), built-in names, atomic models (.pdb/.cif[.gz]; model.cif#A,B "
        "keeps chains A and B), maps (.mrc/.map[.gz]) or folders of them; one class each",
        nargs="+",
        metavar="SOURCE",
    )
    snr_reference: Literal["set", "subtomogram"] = option(
        "set",
        "set: one noise level for all subtomograms (as in a tomogram); subtomogram: "
        "each box at the SNR of its own particle (Liu et al.'s definition)",
        choices=("set", "subtomogram"),
    )

    clutter: bool = option(
        True,
        "no clutter in the simulated tomogram (gold fiducials, vesicles, membranes, ice, "
        "actin, microtubules): particles only",
        negate=True,
        flag="--no-clutter",
    )
    gold_per_um2: float = option(
        20.0,
        "gold fiducials (50-100 Å) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--gold",
    )
    vesicles_per_um2: float = option(
        4.0,
        "lipid vesicles (300-1000 Å) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--vesicles",
    )
    membranes_per_um2: float = option(
        1.0,
        "flat membrane patches (1000-3000 Å) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--membranes",
    )
    ice_per_um2: float = option(
        2.0,
        "ice contamination blobs (200-600 Å radius) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--ice",
    )
    actin_per_um2: float = option(
        8.0,
        "actin-like filaments (70 Å, 1000-4000 Å long) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--actin",
    )
    microtubules_per_um2: float = option(
        1.0,
        "microtubule-like tubes (250 Å, 2000-10000 Å long) in tomograms",
        unit="per µm² of XY field of view",
        minimum=0.0,
        flag="--microtubules",
    )
    carbon_edge: bool = option(False, "a carbon support film with its edge in simulated tomograms")

    def __post_init__(self) -> None:
        problems = []
        if self.snr is not None and self.snr == math.inf:
            object.__setattr__(self, "snr", None)  # noise-free, one spelling
        if self.structures is not None and not isinstance(self.structures, str):
            object.__setattr__(self, "structures", tuple(str(s) for s in self.structures))
        if self.structures is not None:
            from napari_cryossl.simulate.structures import resolve_structures

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
        for name in (n for n in CLUTTER_OPTIONS if n.endswith("_per_um2")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0, got {value}")
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


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    """Independent geometry and noise streams, so the SNR never changes the particles."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise InputError(f"simulation settings: seed must be an integer >= 0, got {seed!r}")
    return np.random.SeedSequence(int(seed)).spawn(2)


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
