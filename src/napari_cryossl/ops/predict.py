"""Classify every particle, and write the predictions where asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["PredictOutput", "predict"]


@dataclass
class PredictOutput:
    """What `predict` made: the predictions (rows in the order of ``data``), the
    particles they are for, and a note on the files written."""

    predictions: Any  # predict.Predictions
    data: Any  # dataset.SubtomogramSet
    note: str = ""


def predict(
    classifier,
    particles,
    *,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    settings=None,
    out=None,
    relion5: bool = False,
    embeddings_out=None,
    copick_write=None,
    copick_session: str = "predict",
    overwrite: bool = False,
):
    """Classify every particle with ``classifier``.

    Args:
        classifier: classifier checkpoint; the boxes are cut at its box size unless
            ``box_size`` (which must match) is given.
        particles, tomogram, copick: see ``ops.particles.load_particles``.
        settings: ``predict.PredictSettings`` (None: the defaults).
        out: where to write the predictions (STAR with the input's rows and columns,
            CSV, a Dynamo .tbl, RELION 5 with ``relion5``, or an existing copick config
            .json); None: write nothing.
        embeddings_out: also save the embeddings (.npy).
        copick_write: a copick config to write the predictions into as picks too.
        overwrite: replace existing output files (False: refuse before any work).

    Returns:
        ``PredictOutput`` (None on the non-main ranks of a torchrun job).
    """
    import numpy as np

    from napari_cryossl.analysis.predict import PredictSettings, iter_predict
    from napari_cryossl.io import InputError, refuse_to_replace
    from napari_cryossl.io.copick import is_copick_config
    from napari_cryossl.ops import results_of
    from napari_cryossl.ops.outputs import (
        is_copick_out,
        tomograms_star_beside,
        write_copick_predictions,
        write_predictions,
    )
    from napari_cryossl.ops.particles import load_particles

    settings = settings or PredictSettings()
    files = [] if out is None or is_copick_out(out) else [Path(out)]
    if relion5 and files:
        files.append(tomograms_star_beside(out))
    if embeddings_out is not None:
        files.append(Path(embeddings_out))
    refuse_to_replace(files, overwrite=overwrite)
    targets = []
    if out is not None and is_copick_out(out):
        if not is_copick_config(out):
            raise InputError(f"{out}: a .json output must be an existing copick config")
        targets.append(Path(out))
    if copick_write is not None and Path(copick_write) not in targets:
        if not is_copick_config(copick_write):
            raise InputError(f"{copick_write}: --copick-write needs a copick config as input")
        targets.append(Path(copick_write))

    data = load_particles(
        particles, tomogram=tomogram, box_size=box_size, checkpoint=classifier, copick=copick
    )
    result = yield from results_of(iter_predict(classifier, data, **asdict(settings)))
    if result is None:  # not the main process of a torchrun job
        return None
    note = write_copick_predictions(
        targets,
        data,
        result,
        voxel_spacing=getattr(copick, "voxel_spacing", None),
        session_id=copick_session,
    )
    if files:
        source = particles if isinstance(particles, str | Path) else Path(out)
        note += write_predictions(source, Path(out), data.table, result, data=data,
                                  relion5=relion5)
    if embeddings_out is not None:
        np.save(embeddings_out, result.embeddings)
    return PredictOutput(result, data, note)
