"""npe2 reader: tomograms (MRC, OME-Zarr) as Image layers, particle lists (STAR/CSV) as Points.

A thin adapter over `napari_cryossl.io`: every unit and axis conversion happens there.
Layers carry ``scale = voxel size`` (Å), so several tomograms, particle lists and
heatmaps line up in Å in the viewer, whatever their binning. Points are ZYX in tomogram
voxels (`architecture.md`), so ``layer.data`` is the same array the core functions take.

Tomograms stay memory-mapped: napari reads only the slices it shows. An OME-Zarr tomogram
with several resolution levels becomes a multiscale Image layer of lazy dask arrays (napari
reads the chunks of the level it shows); its scale is level 0's voxel size, like an MRC
file's. The contrast limits come from robust percentiles of a small strided subsample (of
the coarsest level of an OME-Zarr image), because a full pass over a multi-GB tomogram
would stall the viewer and min/max of a noisy tomogram hides every particle in a few
extreme voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Declared once, in io/ (io.mrc, io.particles); importable from here too (the widgets used to).
from napari_cryossl.io import PARTICLE_SUFFIXES, TOMOGRAM_SUFFIXES

#: At most this many voxels are read to set the contrast limits.
_CONTRAST_SAMPLES = 1_000_000
#: Percentiles for the contrast limits: robust to hot pixels and gold beads.
CONTRAST_PERCENTILES = (0.5, 99.5)

# CSV headers this reader understands (lower-case); others are left to napari's builtins.
_CSV_COORDINATE_NAMES = {"x", "rlncoordinatex", "rlncenteredcoordinatexangst"}


def get_reader(path) -> Callable | None:
    """npe2 reader hook: a function that reads `path`, or None if this plugin cannot.

    Args:
        path: a path or a list of paths; every path must be a tomogram or a particle file.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    for p in paths:
        suffix = Path(p).suffix.lower()
        if suffix not in TOMOGRAM_SUFFIXES + PARTICLE_SUFFIXES:
            return None
        if suffix == ".zarr" and not _is_ome_zarr_volume(Path(p)):
            return None  # a 2D image, a plate, labels...: for napari-ome-zarr or others
        if suffix == ".csv" and not _csv_has_coordinates(Path(p)):
            return None  # e.g. napari's own points/shapes CSV: let its reader take it
    return read_files


def read_files(path) -> list[tuple]:
    """Read tomograms and particle files into napari layer-data tuples.

    Raises:
        napari_cryossl.io.InputError: a file is missing, corrupt or has no coordinates
            (napari shows the message as a notification).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() in TOMOGRAM_SUFFIXES:
            layers.append(tomogram_layer_data(p))
        else:
            layers.append(particles_layer_data(p))
    return layers


def tomogram_layer_data(path) -> tuple:
    """One tomogram as an Image layer tuple (scale in Å): memory-mapped data for an MRC
    file; for an OME-Zarr image, lazy dask arrays, multiscale when it has several levels."""
    from napari_cryossl.io import open_tomogram

    tomo = open_tomogram(path)
    vs = float(tomo.voxel_size)
    metadata = {
        "napari_cryossl": "tomogram",
        "path": str(Path(tomo.path).resolve()),
        "voxel_size": vs,
    }
    kwargs = {
        "name": Path(tomo.path).stem,
        "scale": (vs, vs, vs),
        "contrast_limits": robust_contrast_limits(tomo.levels[-1] if tomo.levels else tomo.data),
        "colormap": "gray",
        "metadata": metadata,
    }
    data = tomo.data
    if tomo.levels:
        import dask.array as da

        levels = [da.from_zarr(level) for level in tomo.levels]
        data = levels if len(levels) > 1 else levels[0]
        kwargs["multiscale"] = len(levels) > 1
    return (data, kwargs, "image")


def robust_contrast_limits(data, percentiles=CONTRAST_PERCENTILES) -> tuple[float, float]:
    """Contrast limits from percentiles of a strided subsample of a (memory-mapped) volume.

    Reads at most about `_CONTRAST_SAMPLES` voxels, from whole Z slices spread over the
    volume (contiguous reads from a memmap), so it is fast on a multi-GB tomogram.
    """
    shape = data.shape
    n = math.prod(shape)
    if n == 0:
        return (0.0, 1.0)
    # Slices through the middle 80 % of Z: the ends of a tomogram are often empty/masked.
    z_lo, z_hi = int(shape[0] * 0.1), max(int(shape[0] * 0.9), int(shape[0] * 0.1) + 1)
    plane = math.prod(shape[1:])
    n_slices = max(1, min(z_hi - z_lo, 16))
    zs = np.unique(np.linspace(z_lo, z_hi - 1, n_slices).round().astype(int))
    step = max(1, int(math.sqrt(plane * len(zs) / _CONTRAST_SAMPLES)))
    sample = np.concatenate(
        [np.asarray(data[z, ::step, ::step], dtype=np.float32).ravel() for z in zs]
    )
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
        if not hi > lo:
            hi = lo + 1.0
    return (float(lo), float(hi))


def particles_layer_data(
    path, *, voxel_size: float | None = None, point_size: float | None = None
) -> tuple:
    """One particle file as a Points layer tuple (ZYX voxels, scale = voxel size in Å).

    Args:
        path: a STAR (RELION 3/4/5) or CSV particle file.
        voxel_size: Å per voxel for the layer's scale; default: from the file, or from the
            tomogram it names (rlnTomoName next to the STAR file), else 1.
        point_size: marker diameter in voxels.
    """
    from napari_cryossl.io import InputError, particle_zyx, read_particles
    from napari_cryossl.particles.colors import DEFAULT_POINT_SIZE

    path = Path(path)
    shape, tomo_vs = _named_tomogram_geometry(path)
    table = read_particles(path, tomogram_shape=shape, voxel_size=voxel_size or tomo_vs)
    if voxel_size is None:
        voxel_size = _voxel_size_of(table) or tomo_vs or 1.0
    if len(table) and not np.isfinite(particle_zyx(table)).all(axis=1).any():
        raise InputError(
            f"{path}: none of its {len(table)} particles has coordinates in a tomogram "
            "(a list of subtomogram files cannot be shown as points)"
        )
    kwargs = points_kwargs(
        table, voxel_size=voxel_size, point_size=point_size or DEFAULT_POINT_SIZE
    )
    data = kwargs.pop("data")
    kwargs["name"] = path.stem
    kwargs["metadata"] = {
        "napari_cryossl": "particles",
        "path": str(path.resolve()),
        "voxel_size": float(voxel_size),
        "tomo_name": _first_tomo_name(table),
    }
    return (data, kwargs, "points")


def points_kwargs(
    table,
    *,
    voxel_size: float,
    point_size: float,
    classes=None,
) -> dict:
    """Points layer keyword arguments (with "data") for a particle table.

    Rows without coordinates (subtomogram files) are dropped.

    Face colour by class (the store's class colours when `classes` is given), unlabelled
    particles hollow with a grey rim; features keep every column the writer needs.
    """
    from napari_cryossl.io import particle_zyx
    from napari_cryossl.particles.colors import UNLABELLED_BORDER, point_colors

    zyx = particle_zyx(table)
    keep = np.isfinite(zyx).all(axis=1)
    table = table.loc[keep].reset_index(drop=True)
    zyx = zyx[keep]
    classes_col = table["class_number"].to_numpy(dtype=np.int64)
    face, border = point_colors(classes_col, classes)
    features = table[[c for c in ("class_number", "probability", "score", "source") if c in table]]
    vs = float(voxel_size)
    if len(zyx) == 0:  # napari cannot take (0, 4) colour arrays; these apply to new points
        face, border = "transparent", UNLABELLED_BORDER
    return {
        "data": zyx,
        "features": features,
        "face_color": face,
        "border_color": border,
        "border_width": 0.15,
        "border_width_is_relative": True,
        "size": point_size,
        "scale": (vs, vs, vs),
        # A particle shows as the disc where its sphere cuts the slice, over the slices it
        # spans (within the dims' slice margins, which the workflow sets to its radius).
        "projection_mode": "rescale_spherical",
        "ndim": 3,
    }


def _voxel_size_of(table) -> float | None:
    """Voxel size recorded with a particle table by io.read_particles, if any."""
    for key in ("voxel_size", "pixel_size"):
        value = getattr(table, "attrs", {}).get(key)
        if value is not None and np.isfinite(value) and value > 0:
            return float(value)
    return None


def _first_tomo_name(table) -> str:
    if "tomo_name" not in table or len(table) == 0:
        return ""
    names = [n for n in table["tomo_name"].astype(str).unique() if n]
    return names[0] if names else ""


def _named_tomogram_geometry(path: Path) -> tuple[tuple[int, int, int] | None, float | None]:
    """Shape and voxel size of the tomogram a particle file names, if it lies beside it.

    RELION-5 centred coordinates (Å from the tomogram centre) need both to become voxels;
    RELION 3/4 pixel coordinates and CSV need the voxel size for the layer's scale (the
    files do not record it). Reads only the MRC header. (None, None) when not found.
    """
    import mrcfile

    for name in _tomo_names(path):
        for candidate in _tomogram_candidates(path.parent, name):
            if candidate.suffix.lower() == ".zarr" and candidate.is_dir():
                geometry = _ome_zarr_geometry(candidate)
                if geometry is not None:
                    return geometry
                continue
            if not candidate.is_file():
                continue
            try:
                with mrcfile.open(candidate, header_only=True, permissive=True) as mrc:
                    nz, ny, nx = (int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx))
                    vs = float(mrc.voxel_size.x)
            except (OSError, ValueError):
                continue
            return (nz, ny, nx), (vs if vs > 0 else None)
    return None, None


def _ome_zarr_geometry(path: Path) -> tuple[tuple[int, int, int], float | None] | None:
    """Shape and voxel size of an OME-Zarr tomogram (metadata only), None if unreadable."""
    import warnings

    from napari_cryossl.io import InputError, open_tomogram

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported when the tomogram itself is opened
            tomo = open_tomogram(path)
    except InputError:
        return None
    return tomo.shape, tomo.voxel_size


def _is_ome_zarr_volume(path: Path) -> bool:
    """Whether a ``.zarr`` folder is for this reader (see `io.omezarr.is_ome_zarr_volume`)."""
    from napari_cryossl.io.omezarr import is_ome_zarr_volume

    return is_ome_zarr_volume(path)


def _tomo_names(path: Path) -> list[str]:
    """Tomogram names (rlnTomoName, rlnMicrographName, CSV tomo_name) a particle file uses."""
    import pandas as pd

    frames = []
    try:
        if path.suffix.lower() == ".star":
            import starfile

            frames = [
                df
                for df in starfile.read(path, always_dict=True).values()
                if isinstance(df, pd.DataFrame)
            ]
        else:
            frames = [
                pd.read_csv(
                    path, usecols=lambda c: str(c).strip().lower() == "tomo_name", dtype=str
                )
            ]
    except Exception:  # a bad file is reported by io.read_particles with a proper message
        return []
    names: list[str] = []
    for df in frames:
        for col in df.columns:
            if str(col).strip().lower() in ("rlntomoname", "rlnmicrographname", "tomo_name"):
                names += [str(v) for v in df[col].dropna().unique()[:4] if str(v)]
    return names


def _tomogram_candidates(folder: Path, name: str):
    base = folder / name
    yield base
    for suffix in TOMOGRAM_SUFFIXES:
        yield base.with_name(base.name + suffix)


def _csv_has_coordinates(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return True  # let read_particles report the problem with the file's name
    names = {h.strip().strip('"').lower() for h in header.split(",")}
    return bool(names & _CSV_COORDINATE_NAMES)
