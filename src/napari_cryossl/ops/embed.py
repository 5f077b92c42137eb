"""The population: every particle's embedding, its 2D map and clusters; and which
unlabelled particles to label next."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbedOutput", "SuggestOutput", "embed", "suggest"]


@dataclass
class EmbedOutput:
    """Embeddings (N, F), the 2D map (N, 2) with its method, clusters (N,; 0 = noise)."""

    embeddings: np.ndarray
    coords: np.ndarray
    method: str
    clusters: np.ndarray
    data: Any = None


def embed(
    model,
    particles,
    *,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    settings=None,
    out=None,
    overwrite: bool = False,
    elsewhere=None,
):
    """Embed every particle with an encoder or classifier checkpoint (or an encoder
    module), map and cluster the embeddings; with ``out`` (a STAR or CSV), write the input
    rows plus cryosslMapX/Y and cryosslCluster, and the vectors to ``out`` with suffix
    .npy.

    ``elsewhere``: runs the map and the clusters in another process (the dock's helper,
    as UMAP and HDBSCAN hold the GIL): called as ``elsewhere(fn, *args, **kwargs)``, a
    generator that yields while it waits and returns ``fn``'s result."""
    from napari_cryossl.analysis.population import (
        EmbedSettings,
        iter_embed_particles,
        map_and_cluster,
    )
    from napari_cryossl.io import refuse_to_replace
    from napari_cryossl.ops import results_of
    from napari_cryossl.ops.outputs import write_rows
    from napari_cryossl.ops.particles import load_particles

    settings = settings or EmbedSettings()
    if out is not None:
        out = Path(out)
        refuse_to_replace([out, out.with_suffix(".npy")], overwrite=overwrite)
    data = load_particles(
        particles, tomogram=tomogram, box_size=box_size, checkpoint=model, copick=copick
    )
    embeddings = yield from results_of(
        iter_embed_particles(model, data, device=settings.device, batch_size=settings.batch_size)
    )
    options = {"method": settings.map, "n_clusters": settings.clusters, "seed": settings.seed}
    if elsewhere is None:
        coords, method, groups = map_and_cluster(embeddings, **options)
    else:
        coords, method, groups = yield from _waiting(
            elsewhere(map_and_cluster, embeddings, **options), len(embeddings)
        )
    if out is not None:
        source = particles if isinstance(particles, str | Path) else out
        write_rows(
            source,
            out,
            data.table,
            np.arange(len(data)),
            {
                "cryosslMapX": coords[:, 0].astype(float).tolist(),
                "cryosslMapY": coords[:, 1].astype(float).tolist(),
                "cryosslCluster": groups.astype(int).tolist(),
            },
        )
        np.save(out.with_suffix(".npy"), embeddings)
    return EmbedOutput(embeddings, coords, method, groups, data)


def _waiting(call, n: int):
    """Progress while another process maps and clusters ``n`` particles."""
    import time

    from napari_cryossl.base.status import Progress

    t0 = time.perf_counter()
    while True:
        try:
            next(call)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage=f"map and clusters of {n} particles", step=0, n_steps=1,
                       unit="map", elapsed_s=time.perf_counter() - t0)


@dataclass
class SuggestOutput:
    """The rows to label next, most informative first, and how they were chosen."""

    rows: np.ndarray
    strategy: str


def suggest(
    model,
    particles,
    *,
    tomogram=None,
    box_size: int | None = None,
    copick=None,
    settings=None,
    out=None,
    overwrite: bool = False,
):
    """Choose ``settings.n`` unlabelled particles (class 0) worth labelling next; with
    ``out``, write those rows of the input, in that order."""
    from napari_cryossl.analysis.population import (
        SuggestSettings,
        iter_embed_particles,
        resolved_strategy,
    )
    from napari_cryossl.analysis.population import suggest as choose
    from napari_cryossl.io import InputError, refuse_to_replace
    from napari_cryossl.ops import results_of
    from napari_cryossl.ops.outputs import write_rows
    from napari_cryossl.ops.particles import load_particles

    settings = settings or SuggestSettings()
    if out is not None:
        refuse_to_replace([out], overwrite=overwrite)
    data = load_particles(
        particles, tomogram=tomogram, box_size=box_size, checkpoint=model, copick=copick
    )
    labels = np.asarray(data.class_numbers, dtype=np.int64)
    if not (labels <= 0).any():
        raise InputError(f"{particles}: every particle is labelled; nothing to suggest")
    embeddings = yield from results_of(
        iter_embed_particles(model, data, device=settings.device, batch_size=settings.batch_size)
    )
    rows = choose(embeddings, labels, settings.n, strategy=settings.strategy)
    if out is not None:
        write_rows(particles, Path(out), data.table, rows)
    return SuggestOutput(np.asarray(rows, dtype=np.int64),
                         resolved_strategy(labels, settings.strategy))
