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
its parameters and pictures. This package imports numpy, scipy and pandas only.

One module per concern, from the bottom up:

- `config`: `SimulationConfig`, `clean_shapes_config`, the seed streams;
- `shapes`: the synthetic classes (Gaussian assemblies) and `class_names`;
- `render`: particles on the voxel grid (assemblies, real densities) and random poses;
- `optics`: CTF, missing wedge, band limit and band-limited noise;
- `subtomograms`: `simulate_subtomograms`, `simulate_subtomogram_details`, `class_templates`;
- `clutter`: gold fiducials, membranes, ice, filaments and a carbon edge in tomograms,
  their table and the tests of picks against it (`match_clutter`, `clutter_mask`);
- `tomogram`: `simulate_tomogram`, `simulate_tomogram_details`;
- `files`: `simulate_to_disk`.

Every public name is importable from ``napari_cryossl.simulate`` itself, as before the
split.
"""

from napari_cryossl.simulate.clutter import (
    CLUTTER_COLUMNS,
    CLUTTER_KINDS,
    clutter_distance,
    clutter_mask,
    match_clutter,
    read_clutter,
    write_clutter,
)
from napari_cryossl.simulate.config import SimulationConfig, clean_shapes_config
from napari_cryossl.simulate.files import simulate_to_disk
from napari_cryossl.simulate.optics import _transfer as _transfer
from napari_cryossl.simulate.optics import contrast_transfer, missing_wedge_mask
from napari_cryossl.simulate.shapes import class_names
from napari_cryossl.simulate.subtomograms import (
    SimulatedSubtomograms,
    class_templates,
    simulate_subtomogram_details,
    simulate_subtomograms,
)
from napari_cryossl.simulate.tomogram import (
    SimulatedTomogram,
    simulate_tomogram,
    simulate_tomogram_details,
)

__all__ = [
    "CLUTTER_COLUMNS",
    "CLUTTER_KINDS",
    "SimulationConfig",
    "SimulatedSubtomograms",
    "SimulatedTomogram",
    "class_names",
    "class_templates",
    "clean_shapes_config",
    "clutter_distance",
    "clutter_mask",
    "contrast_transfer",
    "match_clutter",
    "missing_wedge_mask",
    "read_clutter",
    "simulate_subtomogram_details",
    "simulate_subtomograms",
    "simulate_to_disk",
    "simulate_tomogram",
    "simulate_tomogram_details",
    "write_clutter",
]
