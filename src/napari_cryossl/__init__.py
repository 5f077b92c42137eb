"""napari-cryossl: contrastive self-supervised classification of cryo-ET subtomograms.

The functions a script needs are importable from the package itself::

    import napari_cryossl as cryossl

    data = cryossl.SubtomogramSet.from_star("particles.star", tomogram="tomo.mrc")
    cryossl.run(cryossl.iter_pretrain(data, cryossl.PretrainConfig(), "encoder.pt"))
    for item in cryossl.iter_predict("classifier.pt", data):
        ...  # TrainStatus after each batch, Predictions last

``__all__`` lists them; docs/api.md describes them. They are imported lazily, on first
access, from the module that defines them, so that ``import napari_cryossl`` and
napari's plugin discovery stay fast and import neither torch nor Qt.

``napari_cryossl.analysis.predict`` is the prediction module (``predict.predict`` is the one-shot
function); the package exports ``iter_predict`` and ``Predictions`` from it.
"""

# No `from __future__ import annotations` here: it would bind the name `annotations`
# in the package and hide the submodule `napari_cryossl.particles.annotations` until imported.
import importlib

__version__ = "0.1.0"

#: Public name -> the module (in this package) that defines it.
_API: dict[str, str] = {
    # Files: tomograms (MRC) and particle lists (RELION STAR, CSV)
    "InputError": "io",
    "PARTICLE_COLUMNS": "io",
    "Tomogram": "io",
    "open_tomogram": "io",
    "read_mrc": "io",
    "write_mrc": "io",
    "read_particles": "io",
    "write_particles": "io",
    "make_particle_table": "io",
    "particle_zyx": "io",
    # RELION 5 tomogram sets and Dynamo tables (subtomogram averaging)
    "RelionTomogram": "io",
    "read_tomograms_star": "io",
    "write_tomograms_star": "io",
    "write_dynamo_table": "io",
    "read_dynamo_table": "io",
    # copick projects (runs, tomograms, picks)
    "read_copick": "io",
    "write_copick": "io",
    # Ground truth: simulated subtomograms and tomograms
    "SimulationConfig": "simulate",
    "simulate_subtomograms": "simulate",
    "simulate_tomogram": "simulate",
    "simulate_to_disk": "simulate",
    # Particles: picking, boxes, particle sets
    "pick_particles": "particles.picking",
    "extract_subtomograms": "particles.extract",
    "normalise_subtomograms": "particles.extract",
    "SubtomogramSet": "particles.dataset",
    # Training: self-supervised pretraining, fine-tuning, progress
    "PretrainConfig": "train",
    "FinetuneConfig": "train",
    "iter_pretrain": "train",
    "iter_finetune": "train",
    "run": "train",
    "TrainingCallbacks": "train",
    "TrainStatus": "base.status",
    # Prediction and saliency
    "iter_predict": "analysis.predict",
    "Predictions": "analysis.predict",
    "gradcam": "analysis.saliency",
    "gradcam_for_set": "analysis.saliency",
    "paste_heatmaps": "analysis.saliency",
    # Baselines printed beside every accuracy
    "FloorClassifier": "analysis.baselines",
    "template_match": "analysis.baselines",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import a public name from its module on first access (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
