"""npe2 writer: a Points layer of particles -> RELION STAR or CSV (by the file's suffix).

A thin adapter over `napari_cryossl.io.write_particles`, which owns the file
conventions (XYZ pixels, 1-based rlnClassNumber, rlnMaxValueProbDistribution for the
predicted probability) and writes atomically. The layer's data are ZYX tomogram voxels;
class labels travel in ``layer.features["class_number"]`` (0 = unlabelled), the predicted
probability in ``layer.features["probability"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def write_particles_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer hook for Points layers.

    Args:
        path: destination ending in .star or .csv.
        data: (N, 3) ZYX coordinates in tomogram voxels.
        attributes: the layer's state (napari passes ``layer._get_state()``): features,
            scale (voxel size in Å), metadata (tomo_name, tomogram_shape).

    Returns:
        The written path, as napari expects.
    """
    from napari_cryossl.io import write_particles

    table = layer_table(data, attributes)
    metadata = attributes.get("metadata") or {}
    voxel_size = _voxel_size(attributes)
    shape = metadata.get("tomogram_shape")
    write_particles(
        table,
        path,
        voxel_size=voxel_size,
        tomogram_shape=tuple(shape) if shape is not None else None,
    )
    return [str(path)]


def layer_table(data: Any, attributes: dict):
    """The particle table (`io.PARTICLE_COLUMNS`) for a Points layer's data and state."""
    from napari_cryossl.io import InputError, make_particle_table

    zyx = np.asarray(data, dtype=np.float64)
    if zyx.ndim != 2 or zyx.shape[1] != 3:
        raise InputError(
            f"layer {attributes.get('name', '')!r}: particles must be 3D (Z, Y, X) points, "
            f"got data of shape {zyx.shape}"
        )
    features = attributes.get("features")
    n = len(zyx)

    def column(name, default, dtype):
        if features is not None and name in getattr(features, "columns", ()):
            values = np.asarray(features[name])
            if len(values) == n:
                return values.astype(dtype)
        return np.full(n, default, dtype=dtype)

    class_number = column("class_number", 0, np.int64)
    score = column("score", np.nan, np.float64)
    probability = column("probability", np.nan, np.float64)
    metadata = attributes.get("metadata") or {}
    table = make_particle_table(
        zyx,
        class_number=class_number,
        source="manual",
        score=score,
        tomo_name=str(metadata.get("tomo_name") or ""),
    )
    if features is not None and "source" in getattr(features, "columns", ()) and len(features) == n:
        table["source"] = np.asarray(features["source"]).astype(str)
    table["probability"] = probability
    return table


def _voxel_size(attributes: dict) -> float | None:
    metadata = attributes.get("metadata") or {}
    vs = metadata.get("voxel_size")
    if vs is None:
        scale = attributes.get("scale")
        if scale is not None and len(scale):
            vs = float(scale[-1])
    return float(vs) if vs is not None and float(vs) > 0 else None
