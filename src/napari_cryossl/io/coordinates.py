"""Coordinates in particle files and the tomogram geometry they refer to.

RELION-5 writes ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre);
`centred_to_voxels` and `voxels_to_centred` convert as RELION does. `_Geometry` holds
the tomogram shape and voxel size a file's coordinates refer to (one, or per tomogram
name) and `_check_inside` rejects particles outside their tomogram.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io.errors import _fail, _positive_float, _tomogram_shape

# ---------------------------------------------------------------------- coordinate conversions


def centred_to_voxels(xyz_angst, tomogram_shape, voxel_size: float) -> np.ndarray:
    """RELION-5 centred Å coordinates -> 0-based voxel coordinates of the tomogram (XYZ).

    RELION 5 (``ParticleSet::getParticleCoordDecenteredPixel`` with the tomogram centre set
    in ``TomogramSet::loadTomogram``) uses ``pixel = Å / pixel_size + size / 2`` with float
    division, so the centre of a 100-voxel axis is 50.0 and of a 101-voxel axis 50.5.

    Args:
        xyz_angst: (N, 3) X, Y, Z in Å from the tomogram centre.
        tomogram_shape: (nz, ny, nx) in voxels.
        voxel_size: Å per voxel of that tomogram.

    Returns:
        (N, 3) float64 X, Y, Z in voxels.
    """
    nz, ny, nx = _tomogram_shape(tomogram_shape, "tomogram")
    centre = np.array([nx, ny, nz], dtype=np.float64) / 2.0
    return np.asarray(xyz_angst, dtype=np.float64) / float(voxel_size) + centre


def voxels_to_centred(xyz, tomogram_shape, voxel_size: float) -> np.ndarray:
    """Inverse of `centred_to_voxels`: (N, 3) XYZ voxels -> Å from the tomogram centre."""
    nz, ny, nx = _tomogram_shape(tomogram_shape, "tomogram")
    centre = np.array([nx, ny, nz], dtype=np.float64) / 2.0
    return (np.asarray(xyz, dtype=np.float64) - centre) * float(voxel_size)


class _Geometry:
    """Tomogram shape and voxel size: one for every particle, or per tomogram name."""

    def __init__(self, shape, voxel_size, path: Path) -> None:
        if isinstance(shape, Mapping):
            self.shapes = {str(k): _tomogram_shape(v, path) for k, v in shape.items()}
        else:
            self.shapes = None if shape is None else _tomogram_shape(shape, path)
        if isinstance(voxel_size, Mapping):
            self.sizes = {
                str(k): _positive_float(v, f"voxel_size[{k!r}]", path)
                for k, v in voxel_size.items()
            }
        else:
            self.sizes = (
                None if voxel_size is None else _positive_float(voxel_size, "voxel_size", path)
            )

    @property
    def given(self) -> bool:
        return self.shapes is not None or self.sizes is not None

    @property
    def single_voxel_size(self) -> float | None:
        if isinstance(self.sizes, dict):
            values = set(self.sizes.values())
            return values.pop() if len(values) == 1 else None
        return self.sizes

    def per_row(self, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) tomogram sizes as X, Y, Z and (n,) voxel sizes; NaN where unknown."""
        n = len(names)
        sizes = np.full((n, 3), np.nan)
        voxel = np.full(n, np.nan)
        if isinstance(self.shapes, dict):
            for key, (nz, ny, nx) in self.shapes.items():
                sizes[names == key] = (nx, ny, nz)
        elif self.shapes is not None:
            nz, ny, nx = self.shapes
            sizes[:] = (nx, ny, nz)
        if isinstance(self.sizes, dict):
            for key, value in self.sizes.items():
                voxel[names == key] = value
        elif self.sizes is not None:
            voxel[:] = self.sizes
        return sizes, voxel


def _check_inside(table: pd.DataFrame, geometry: _Geometry, path: Path) -> None:
    """Every centre whose tomogram shape is known must round to one of its voxels.

    Voxel i covers [i - 0.5, i + 0.5), so inside means -0.5 <= c < n - 0.5 on every axis.
    """
    if geometry.shapes is None or len(table) == 0:
        return
    xyz = table[["x", "y", "z"]].to_numpy(dtype=np.float64, na_value=np.nan)
    limits, _ = geometry.per_row(table["tomo_name"].to_numpy(dtype=object))
    checkable = np.isfinite(xyz).all(axis=1) & np.isfinite(limits).all(axis=1)
    with np.errstate(invalid="ignore"):
        outside = checkable & ((xyz < -0.5) | (xyz >= limits - 0.5)).any(axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        x, y, z = xyz[i]
        nx, ny, nz = (int(v) for v in limits[i])
        raise _fail(
            path,
            f"{int(outside.sum())} of {len(table)} particles lie outside the tomogram "
            f"(X x Y x Z = {nx} x {ny} x {nz} voxels), e.g. particle {i + 1} at x={x:g}, "
            f"y={y:g}, z={z:g}; were the coordinates picked at another binning (RELION 4 uses "
            "unbinned tilt-series pixels) or for another tomogram?",
        )
