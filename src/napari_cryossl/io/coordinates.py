"""Coordinates in particle files and the tomogram geometry they refer to.

RELION-5 writes ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre);
`centred_to_voxels` and `voxels_to_centred` convert as RELION does. `RelionTomogram` is a
tomogram as RELION records it (a row of ``tomograms.star``: tilt-series pixel size,
binning, size in unbinned pixels), which fixes both the centre of centred Å coordinates and
the pixel size of RELION-4 ``rlnCoordinateX/Y/Z``. `_Geometry` holds the tomogram shape,
voxel size, centre and tilt-series pixel size a file's coordinates refer to (one, or per
tomogram name) and `_check_inside` rejects particles outside their tomogram.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io.errors import _fail, _positive_float, _tomogram_shape

#: Relative difference below which two pixel sizes are the same (MRC headers store float32).
_SAME_PIXEL_SIZE = 1e-4

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


@dataclass(frozen=True)
class RelionTomogram:
    """One tomogram as RELION records it: a row of ``tomograms.star`` (block ``global``).

    RELION 5's ``relion_tomo_reconstruct_tomogram`` reconstructs a tomogram of
    ``rlnTomoSizeX/Y/Z`` unbinned tilt-series pixels at ``rlnTomoTomogramBinning``, with
    voxel ``i`` at unbinned pixel ``i * binning`` (zero origin): its voxel size is
    ``rlnTomoTiltSeriesPixelSize * binning`` and its shape is the size divided by the binning
    (X and Y rounded, Z truncated, as that program does). Centred Å coordinates are measured
    from ``size / 2`` unbinned pixels (``TomogramSet::loadTomogram``), i.e. from
    ``size / (2 * binning)`` voxels of the reconstruction.

    Attributes:
        name: ``rlnTomoName``.
        tilt_series_pixel_size: Å per unbinned tilt-series pixel (``rlnTomoTiltSeriesPixelSize``).
        size_xyz: ``rlnTomoSizeX/Y/Z``: the tomogram's extent in unbinned tilt-series pixels.
        binning: ``rlnTomoTomogramBinning`` (reconstructed voxel size / tilt-series pixel size;
            1 = unbinned).
        path: ``rlnTomoReconstructedTomogram`` (absolute when it was found), or None.
    """

    name: str
    tilt_series_pixel_size: float
    size_xyz: tuple[float, float, float]
    binning: float = 1.0
    path: Path | None = None

    @property
    def voxel_size(self) -> float:
        """Å per voxel of the reconstructed (binned) tomogram."""
        return float(self.tilt_series_pixel_size) * float(self.binning)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) of the reconstructed tomogram (X, Y rounded and Z truncated, as RELION)."""
        w, h, d = (float(v) for v in self.size_xyz)
        b = float(self.binning)
        # (1e-9: a size that is a whole number of binned voxels must not lose one to rounding)
        return (
            max(1, int(d / b + 1e-9)),
            max(1, int(h / b + 0.5)),
            max(1, int(w / b + 0.5)),
        )

    @property
    def centre_xyz(self) -> np.ndarray:
        """The centre of centred Å coordinates, in voxels of the reconstructed tomogram (XYZ)."""
        return np.asarray(self.size_xyz, dtype=np.float64) / (2.0 * float(self.binning))

    @classmethod
    def from_tomogram(cls, tomogram, *, name: str | None = None, binning: float = 1.0):
        """The RELION record of an opened tomogram (anything with ``shape``, ``voxel_size``
        and ``path``, e.g. a `napari_cryossl.io.Tomogram`).

        Args:
            tomogram: the tomogram, shape (nz, ny, nx) in voxels of ``voxel_size`` Å.
            name: ``rlnTomoName``; default: the file name without its suffix.
            binning: how many tilt-series pixels one voxel spans (the tilt-series pixel
                size is ``voxel_size / binning``). Centred Å coordinates do not depend on it.
        """
        where = getattr(tomogram, "path", "tomogram")
        b = _positive_float(binning, "binning", where)
        vs = _positive_float(tomogram.voxel_size, "voxel_size", where)
        nz, ny, nx = _tomogram_shape(tomogram.shape, where)
        path = getattr(tomogram, "path", None)
        if name is None:
            name = Path(path).stem if path is not None else ""
        return cls(
            name=str(name),
            tilt_series_pixel_size=vs / b,
            size_xyz=(nx * b, ny * b, nz * b),
            binning=b,
            path=None if path is None else Path(os.path.abspath(path)),
        )


class _Geometry:
    """The tomogram(s) a file's coordinates refer to: shape, voxel size, the centre of
    centred Å coordinates and the tilt-series pixel size, for every particle or per
    tomogram name.

    `shape` and `voxel_size` (one value, or a mapping name -> value) describe the tomogram
    as opened (what the particle table's voxels are); `tomograms` (name -> `RelionTomogram`)
    adds what RELION records: the centre (``size / 2`` unbinned pixels) and the tilt-series
    pixel size of RELION-4 pixel coordinates, and fills the shape and voxel size of names
    not given otherwise.
    """

    def __init__(self, shape, voxel_size, path: Path, tomograms=None) -> None:
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
        if tomograms is None:
            tomograms = {}
        if not isinstance(tomograms, Mapping):
            raise _fail(
                path,
                "tomograms must map tomogram names to RelionTomogram (see read_tomograms_star), "
                f"got {type(tomograms).__name__}",
            )
        self.tomograms = {str(k): v for k, v in tomograms.items()}
        for key, tomo in self.tomograms.items():
            if not isinstance(tomo, RelionTomogram):
                raise _fail(path, f"tomograms[{key!r}] is not a RelionTomogram")

    @property
    def given(self) -> bool:
        return self.shapes is not None or self.sizes is not None or bool(self.tomograms)

    @property
    def has_shapes(self) -> bool:
        return self.shapes is not None or bool(self.tomograms)

    @property
    def single_voxel_size(self) -> float | None:
        if isinstance(self.sizes, dict) or (self.sizes is None and self.tomograms):
            given = self.sizes if isinstance(self.sizes, dict) else {}
            values = set(given.values())
            values |= {t.voxel_size for k, t in self.tomograms.items() if k not in given}
            return values.pop() if len(values) == 1 else None
        return self.sizes

    def per_row(self, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) tomogram sizes as X, Y, Z and (n,) voxel sizes; NaN where unknown."""
        n = len(names)
        sizes = np.full((n, 3), np.nan)
        voxel = np.full(n, np.nan)
        for key, tomo in self.tomograms.items():  # RELION's record, unless given otherwise
            nz, ny, nx = tomo.shape
            sizes[names == key] = (nx, ny, nz)
            voxel[names == key] = tomo.voxel_size
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

    def centres(self, names: np.ndarray, sizes: np.ndarray, voxel: np.ndarray) -> np.ndarray:
        """(n, 3) XYZ voxel centres of centred Å coordinates: RELION's ``size / 2`` unbinned
        pixels where the tomogram's record is known (in voxels of ``voxel``), else the
        shape's half."""
        out = sizes / 2.0
        for key, tomo in self.tomograms.items():
            rows = names == key
            # The centre in Å, then in the voxels the table uses (the same tomogram as
            # opened may have another voxel size only if it is another reconstruction).
            centre_a = np.asarray(tomo.size_xyz, dtype=np.float64) / 2.0
            centre_a = centre_a * tomo.tilt_series_pixel_size
            out[rows] = centre_a[None, :] / voxel[rows, None]
        return out

    def pixel_sizes(self, names: np.ndarray) -> np.ndarray:
        """(n,) tilt-series pixel sizes from the tomograms' records; NaN where unknown."""
        out = np.full(len(names), np.nan)
        for key, tomo in self.tomograms.items():
            out[names == key] = tomo.tilt_series_pixel_size
        return out


def _rescale_pixels(xyz: np.ndarray, pixel: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """Pixel coordinates of `pixel` Å (e.g. unbinned tilt-series pixels) -> voxels of
    `voxel` Å; rows where either is unknown, or both agree, are kept as they are.

    Zero origin on both grids (voxel ``i`` of a reconstruction binned by ``b`` sits at
    pixel ``i * b``, as in RELION 4.1+ and 5), so the conversion is a plain ratio.
    """
    ratio = pixel / voxel
    with np.errstate(invalid="ignore"):
        scale = np.isfinite(ratio) & (np.abs(ratio - 1.0) > _SAME_PIXEL_SIZE)
    out = xyz.copy()
    out[scale] *= ratio[scale, None]
    return out


def _check_inside(table: pd.DataFrame, geometry: _Geometry, path: Path) -> None:
    """Every centre whose tomogram shape is known must round to one of its voxels.

    Voxel i covers [i - 0.5, i + 0.5), so inside means -0.5 <= c < n - 0.5 on every axis.
    """
    if not geometry.has_shapes or len(table) == 0:
        return
    xyz = table[["x", "y", "z"]].to_numpy(dtype=np.float64, na_value=np.nan)
    names = table["tomo_name"].to_numpy(dtype=object)
    limits, _ = geometry.per_row(names)
    checkable = np.isfinite(xyz).all(axis=1) & np.isfinite(limits).all(axis=1)
    with np.errstate(invalid="ignore"):
        outside = checkable & ((xyz < -0.5) | (xyz >= limits - 0.5)).any(axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        x, y, z = xyz[i]
        nx, ny, nz = (int(v) for v in limits[i])
        which = f" {names[i]!r}" if names[i] else ""
        raise _fail(
            path,
            f"{int(outside.sum())} of {len(table)} particles lie outside the tomogram "
            f"(X x Y x Z = {nx} x {ny} x {nz} voxels), e.g. particle {i + 1} at x={x:g}, "
            f"y={y:g}, z={z:g} is outside its tomogram{which}; were the coordinates picked at "
            "another binning (RELION 4 uses unbinned tilt-series pixels: give the file's "
            "rlnTomoTiltSeriesPixelSize, or the tomograms.star, to rescale them) or for "
            "another tomogram?",
        )
