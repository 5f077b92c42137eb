"""npe2 sample data: a small simulated crowded tomogram with its ground-truth particles.

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


def sample_folder() -> Path:
    """Where the sample files live: ``$NAPARI_CRYOSSL_SAMPLE_DIR`` or the user cache folder."""
    env = os.environ.get("NAPARI_CRYOSSL_SAMPLE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cryossl")) / "sample"


def ensure_sample_files(folder: Path | None = None) -> dict[str, Path]:
    """Simulate the sample tomogram and its ground truth once; reuse them afterwards.

    Returns:
        {"tomogram": MRC path, "ground_truth": STAR path}.
    """
    from napari_cryossl.io import write_mrc, write_particles
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    folder = Path(folder) if folder is not None else sample_folder()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "tomogram": folder / "crowded_tomogram.mrc",
        "ground_truth": folder / "crowded_tomogram_ground_truth.star",
    }
    stamp = folder / "sample.json"
    params = {
        "version": _SAMPLE_VERSION,
        "shape": list(SAMPLE_SHAPE),
        "n_particles": SAMPLE_PARTICLES,
        "n_classes": SAMPLE_CLASSES,
        "snr": SAMPLE_SNR,
        "seed": SAMPLE_SEED,
    }
    if all(p.is_file() for p in paths.values()) and _read_json(stamp) == params:
        return paths
    config = SimulationConfig(
        n_classes=SAMPLE_CLASSES,
        box_size=24,
        voxel_size=SAMPLE_VOXEL_SIZE,
        snr=SAMPLE_SNR,
        particle_diameter_a=SAMPLE_DIAMETER_A,
    )
    volume, truth = simulate_tomogram(SAMPLE_SHAPE, SAMPLE_PARTICLES, config, seed=SAMPLE_SEED)
    truth["tomo_name"] = paths["tomogram"].name
    write_mrc(paths["tomogram"], volume, config.voxel_size)
    write_particles(truth, paths["ground_truth"], voxel_size=config.voxel_size)
    stamp.write_text(json.dumps(params))
    return paths


def make_sample_data() -> list[tuple]:
    """npe2 sample-data hook: the simulated tomogram (Image) and its ground truth (Points)."""
    from napari_cryossl._reader import particles_layer_data, tomogram_layer_data

    paths = ensure_sample_files()
    image = tomogram_layer_data(paths["tomogram"])
    image[1]["metadata"]["particle_diameter_a"] = SAMPLE_DIAMETER_A
    vs = image[1]["metadata"]["voxel_size"]
    truth = particles_layer_data(
        paths["ground_truth"], voxel_size=vs, point_size=SAMPLE_DIAMETER_A / vs
    )
    truth[1]["name"] = "ground truth (simulated)"
    truth[1]["visible"] = False  # the answer key: hidden until the user asks for it
    return [image, truth]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
