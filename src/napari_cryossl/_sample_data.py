"""npe2 sample data: small simulated crowded tomograms with their ground-truth particles.

Two samples: synthetic shapes (`make_sample_data`) and real macromolecular complexes
from the built-in set (`make_structures_sample_data`: a 70S ribosome, TRiC,
apoferritin and RuvAB, at their real sizes).

*File ▸ Open Sample ▸ napari-cryossl* gives a new user something to try every step on
(picking, labelling, pretraining, fine-tuning, prediction, Grad-CAM) in a few minutes on
a laptop CPU. The tomogram is written to an MRC file (in the user cache folder, or
``$NAPARI_CRYOSSL_SAMPLE_DIR``) rather than returned as an in-memory array, because the
workflow keys its autosaved annotations to the tomogram's file; the files are reused on
the next call, so the sample opens instantly the second time and labels made on it come
back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Geometry of the sample: small enough to simulate in a few seconds, big enough to crowd.
SAMPLE_SHAPE = (48, 160, 160)
SAMPLE_PARTICLES = 60
SAMPLE_CLASSES = 4
SAMPLE_SNR = 0.5  # particles visible by eye, still noisy
SAMPLE_SEED = 0
SAMPLE_DIAMETER_A = 150.0
SAMPLE_VOXEL_SIZE = 10.0
# Bump when the sample's parameters (or the simulator's output) change, to regenerate.
_SAMPLE_VERSION = 2

#: The real-complex sample: four built-in complexes of different size and shape.
STRUCTURES_SAMPLE = ("ribosome70S", "TRiC", "apoferritin", "RuvAB")
STRUCTURES_SAMPLE_SHAPE = (64, 192, 192)
STRUCTURES_SAMPLE_PARTICLES = 48


def sample_folder() -> Path:
    """Where the sample files live: ``$NAPARI_CRYOSSL_SAMPLE_DIR`` or the user cache folder."""
    env = os.environ.get("NAPARI_CRYOSSL_SAMPLE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cryossl")) / "sample"


def ensure_sample_files(folder: Path | None = None, kind: str = "shapes") -> dict[str, Path]:
    """Simulate the sample tomogram and its ground truth once; reuse them afterwards.

    Args:
        folder: where to write (default `sample_folder()`).
        kind: "shapes" (synthetic classes) or "structures" (real complexes).

    Returns:
        {"tomogram": MRC path, "ground_truth": STAR path}.
    """
    from napari_cryossl.io import write_mrc, write_particles
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    if kind not in ("shapes", "structures"):
        raise ValueError(f"sample kind must be 'shapes' or 'structures', got {kind!r}")
    folder = Path(folder) if folder is not None else sample_folder()
    folder.mkdir(parents=True, exist_ok=True)
    stem = "crowded_tomogram" if kind == "shapes" else "complexes_tomogram"
    paths = {
        "tomogram": folder / f"{stem}.mrc",
        "ground_truth": folder / f"{stem}_ground_truth.star",
    }
    stamp = folder / ("sample.json" if kind == "shapes" else "complexes_sample.json")
    params = {
        "version": _SAMPLE_VERSION,
        "shape": list(SAMPLE_SHAPE if kind == "shapes" else STRUCTURES_SAMPLE_SHAPE),
        "n_particles": SAMPLE_PARTICLES if kind == "shapes" else STRUCTURES_SAMPLE_PARTICLES,
        "n_classes": SAMPLE_CLASSES if kind == "shapes" else len(STRUCTURES_SAMPLE),
        "snr": SAMPLE_SNR,
        "seed": SAMPLE_SEED,
    }
    if kind == "structures":
        params["structures"] = list(STRUCTURES_SAMPLE)
    if all(p.is_file() for p in paths.values()) and _read_json(stamp) == params:
        return paths
    config = SimulationConfig(
        n_classes=params["n_classes"],
        box_size=24 if kind == "shapes" else 32,
        voxel_size=SAMPLE_VOXEL_SIZE,
        snr=SAMPLE_SNR,
        particle_diameter_a=SAMPLE_DIAMETER_A,
        structures=STRUCTURES_SAMPLE if kind == "structures" else None,
    )
    volume, truth = simulate_tomogram(
        tuple(params["shape"]), params["n_particles"], config, seed=SAMPLE_SEED
    )
    truth["tomo_name"] = paths["tomogram"].name
    write_mrc(paths["tomogram"], volume, config.voxel_size)
    write_particles(truth, paths["ground_truth"], voxel_size=config.voxel_size)
    stamp.write_text(json.dumps(params))
    return paths


def make_sample_data() -> list[tuple]:
    """npe2 sample-data hook: the simulated tomogram (Image) and its ground truth (Points)."""
    return _layers(ensure_sample_files(), SAMPLE_DIAMETER_A)


def make_structures_sample_data() -> list[tuple]:
    """npe2 sample-data hook: a tomogram of real complexes (70S ribosome, TRiC,
    apoferritin, RuvAB) and its ground truth; class names are the complexes' names."""
    from napari_cryossl.simulate.structures import load_structure

    paths = ensure_sample_files(kind="structures")
    # a typical diameter for picking: the median over the four complexes
    diameters = [
        2 * load_structure(name, SAMPLE_VOXEL_SIZE).radius_a(0.95) for name in STRUCTURES_SAMPLE
    ]
    layers = _layers(paths, float(sorted(diameters)[len(diameters) // 2]))
    layers[1][1]["metadata"] = {
        **(layers[1][1].get("metadata") or {}),
        "class_names": {str(i + 1): name for i, name in enumerate(STRUCTURES_SAMPLE)},
    }
    return layers


def _layers(paths: dict[str, Path], diameter_a: float) -> list[tuple]:
    from napari_cryossl._reader import particles_layer_data, tomogram_layer_data

    image = tomogram_layer_data(paths["tomogram"])
    image[1]["metadata"]["particle_diameter_a"] = diameter_a
    vs = image[1]["metadata"]["voxel_size"]
    truth = particles_layer_data(paths["ground_truth"], voxel_size=vs, point_size=diameter_a / vs)
    truth[1]["name"] = "ground truth (simulated)"
    truth[1]["symbol"] = "ring"  # told apart from picks and predictions (discs) at a glance
    truth[1]["visible"] = False  # the answer key: hidden until the user asks for it
    return [image, truth]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
