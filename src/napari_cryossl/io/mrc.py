"""Tomograms and subtomograms in MRC files: `Tomogram`, `open_tomogram`, `read_mrc`, `write_mrc`.

Arrays are **ZYX** voxels. `open_tomogram` returns a read-only ``numpy.memmap``, so a
multi-GB tomogram costs no RAM until boxes are read from it; the header is checked
(mode, axis order, voxel size, IMOD's signed-byte flag) before any data is mapped.
OME-Zarr folders (``.zarr``) open into the same `Tomogram`, their level 0 a lazy
``zarr.Array`` (`napari_cryossl.io.omezarr`).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from napari_cryossl.io.atomic import atomic_write
from napari_cryossl.io.errors import InputWarning, _fail, _positive_float
from napari_cryossl.io.omezarr import ZARR_SUFFIX, ChunkedVolume, _is_zarr_path, read_ome_zarr

#: Suffixes of MRC files.
MRC_SUFFIXES = (".mrc", ".rec", ".map")
#: Suffixes accepted for tomograms: MRC files and OME-Zarr folders.
TOMOGRAM_SUFFIXES = (*MRC_SUFFIXES, ZARR_SUFFIX)
#: MRC modes we read, with their numpy dtypes (MRC2014; mode 6 is IMOD's uint16).
MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
#: Voxel size (Å) assumed when an MRC header has none; a warning says so.
DEFAULT_VOXEL_SIZE = 1.0
_IMOD_STAMP = 1146047817  # 'IMOD' in the header's imodStamp field (bytes 152-155)


# ---------------------------------------------------------------------------------- tomograms


@dataclass(eq=False)
class Tomogram:
    """A tomogram on disk, memory-mapped (MRC) or chunked (OME-Zarr).

    Attributes:
        path: the MRC file or the OME-Zarr folder.
        data: ZYX voxels: a read-only ``numpy.memmap`` for MRC files, level 0 as a
            `napari_cryossl.io.omezarr.ChunkedVolume` for OME-Zarr (any ZYX array is
            accepted, e.g. in tests). Reading a box reads only that box (or the chunks it
            overlaps) from disk.
        voxel_size: Å per voxel (isotropic).
        levels: every resolution level of an OME-Zarr image as a ``zarr.Array``, finest
            first (``levels[0]`` holds ``data``'s voxels), for viewers; empty for MRC files.
    """

    path: Path
    data: np.ndarray
    voxel_size: float
    levels: tuple = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) in voxels."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def name(self) -> str:
        """The file name (what ``rlnTomoName`` usually holds)."""
        return Path(self.path).name


@dataclass(frozen=True)
class _MrcLayout:
    """What the header says, checked against the file size before any data is touched."""

    shape_zyx: tuple[int, int, int]  # after applying the header's axis mapping
    file_shape: tuple[int, int, int]  # (sections, rows, columns) as stored
    dtype: np.dtype
    axes: tuple[int, int, int]  # transpose that turns the stored array into ZYX
    unsigned_bytes: bool
    voxel_size: float | None  # None when the header has none


def open_tomogram(path: str | os.PathLike) -> Tomogram:
    """Open an MRC tomogram memory-mapped and read-only (or an OME-Zarr image lazily),
    after validating it.

    Reads the header with mrcfile's definitions and checks it against the file size before
    mapping anything, so a corrupt or truncated file fails fast with a clear message and a
    forged header cannot make us allocate memory. The data are not read: only the central
    Z slice of a floating-point volume is checked for NaN/Inf (a cheap check; whole boxes
    are checked when extracted).

    Modes 0, 1, 2, 6, 12 (int8, int16, float32, uint16, float16) are accepted; IMOD mode-0
    files that mark their bytes as unsigned are read as uint8. Files whose header maps axes
    in a non-standard order (MAPC/MAPR/MAPS) are transposed (a view) to ZYX.

    An OME-Zarr folder (``.zarr``, NGFF 0.4 or 0.5, 3D with the axes z, y, x) opens with
    ``data`` = its level 0 as a ``ChunkedVolume`` (a slice reads only the chunks it
    overlaps, one at a time, and recently decoded chunks are kept),
    ``levels`` = every resolution level, and the voxel size from level 0's scale converted to
    Å from the axes' unit (see `napari_cryossl.io.omezarr.read_ome_zarr`). It needs the
    optional ``zarr`` extra.

    Args:
        path: ``.mrc``, ``.rec`` or ``.map`` file (any MRC file is accepted), or a ``.zarr``
            folder.

    Returns:
        A `Tomogram` whose ``data`` is a read-only ZYX ``numpy.memmap`` (MRC; the mapping
        stays valid after the file handle is closed, no file descriptor is kept open) or a
        ``ChunkedVolume`` (OME-Zarr).

    Raises:
        InputError: missing file, not MRC, truncated/corrupt, unsupported mode, 2D image or
            single-slice stack, 4D volume stack, non-finite values in the central slice;
            for OME-Zarr, what `read_ome_zarr` refuses.

    Warns:
        InputWarning: no usable voxel size in the header or the metadata (1.0 Å is used) or
            anisotropic voxels (the X size is used).
    """
    path = Path(path)
    if _is_zarr_path(path):
        return _open_ome_zarr(path)
    layout = _inspect_mrc(path)
    try:
        with warnings.catch_warnings():
            # Everything mrcfile could warn about was checked above; its remaining warnings
            # (e.g. trailing bytes after the data) are harmless for reading.
            warnings.simplefilter("ignore")
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                data = mrc.data
    except (OSError, ValueError, OverflowError, MemoryError) as err:
        raise _fail(path, f"cannot memory-map the MRC data ({err})") from err
    if data is None or tuple(data.shape) != layout.file_shape:
        got = None if data is None else tuple(data.shape)
        raise _fail(path, f"MRC data could not be mapped as {layout.file_shape} (got {got})")
    if layout.unsigned_bytes:
        data = data.view(np.uint8)
    if layout.axes != (0, 1, 2):
        data = data.transpose(layout.axes)
    voxel_size = layout.voxel_size
    if voxel_size is None:
        warnings.warn(
            f"{path}: the MRC header has no voxel size; using {DEFAULT_VOXEL_SIZE} Å "
            "(set it with e.g. `alterheader` or pass Å values yourself)",
            InputWarning,
            stacklevel=2,
        )
        voxel_size = DEFAULT_VOXEL_SIZE
    if data.dtype.kind == "f":
        z = data.shape[0] // 2
        plane = np.asarray(data[z])
        if not np.isfinite(plane).all():
            bad = np.argwhere(~np.isfinite(plane))[0]
            raise _fail(
                path,
                f"non-finite voxel (NaN or Inf) at z={z}, y={int(bad[0])}, x={int(bad[1])}; "
                "the tomogram is corrupt or was written with masked values",
            )
    return Tomogram(path=path, data=data, voxel_size=float(voxel_size))


def _open_ome_zarr(path: Path) -> Tomogram:
    image = read_ome_zarr(path)
    voxel_size = image.voxel_size
    if voxel_size is None:
        warnings.warn(
            f"{path}: the image has no voxel size in its OME-Zarr metadata (no scale for "
            f"level 0); using {DEFAULT_VOXEL_SIZE} Å",
            InputWarning,
            stacklevel=3,
        )
        voxel_size = DEFAULT_VOXEL_SIZE
    return Tomogram(
        path=path,
        data=ChunkedVolume(image.levels[0]),
        voxel_size=float(voxel_size),
        levels=image.levels,
    )


def _tomogram_exists(path: str | os.PathLike) -> bool:
    """Whether a tomogram is at `path`: an MRC file, or an OME-Zarr (``.zarr``) folder."""
    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX:
        return path.is_dir()
    return path.is_file()


def read_mrc(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a small MRC volume (a subtomogram, a map) fully into RAM as float32.

    Same validation as `open_tomogram`, plus every voxel must be finite.

    Args:
        path: MRC file.

    Returns:
        (data, voxel_size): float32 ZYX array (writeable, a copy) and Å per voxel.

    Raises:
        InputError: as `open_tomogram`, or any NaN/Inf voxel (its position is named).
    """
    tomo = open_tomogram(path)
    data = np.array(tomo.data, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise _fail(
            path,
            f"non-finite voxel (NaN or Inf) at z={int(bad[0])}, y={int(bad[1])}, x={int(bad[2])}",
        )
    return data, tomo.voxel_size


def write_mrc(path: str | os.PathLike, data, voxel_size: float) -> None:
    """Write a ZYX volume as a float32 (mode 2) MRC file, atomically.

    Args:
        path: destination (its folder must exist).
        data: 3D array-like, ZYX.
        voxel_size: Å per voxel, written to the header (cella = shape × voxel size).

    Raises:
        InputError: not 3D, non-finite values (we would refuse to read the file back), or a
            voxel size that is not a positive number.
    """
    path = Path(path)
    arr = np.asarray(data)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise _fail(path, f"can only write a non-empty 3D (ZYX) volume, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise _fail(path, f"can only write real-valued voxels, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise _fail(path, "refusing to write non-finite voxels (NaN or Inf)")
    vs = _positive_float(voxel_size, "voxel_size", path)
    with atomic_write(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        mrc.set_volume()
        mrc.voxel_size = vs


def _inspect_mrc(path: Path) -> _MrcLayout:
    """Parse and check an MRC header against the file, touching no data."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise _fail(path, "is a folder, not an MRC file")
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_DTYPE.itemsize)
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except PermissionError as err:
        raise _fail(path, "cannot read the file (permission denied)") from err
    except OSError as err:
        raise _fail(path, f"cannot read the file ({err.strerror or err})") from err
    if len(raw) < HEADER_DTYPE.itemsize:
        raise _fail(
            path,
            f"not an MRC file or truncated: {size} bytes, an MRC header alone is "
            f"{HEADER_DTYPE.itemsize} bytes",
        )
    if raw[208:211] != b"MAP":
        raise _fail(path, "not an MRC file (no 'MAP' identifier in the header) or corrupt")
    header = _header_with_byte_order(raw)
    mode = int(header.mode)
    if mode not in MRC_MODES:
        supported = ", ".join(f"{m} ({t})" for m, t in MRC_MODES.items())
        raise _fail(path, f"unsupported MRC mode {mode}; supported modes: {supported}")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise _fail(path, f"corrupt MRC header: dimensions nx={nx}, ny={ny}, nz={nz}")
    if nz == 1:
        raise _fail(
            path,
            f"is a 2D image ({nx} x {ny}, one section), not a 3D volume; tomograms and "
            "subtomograms must have several Z sections",
        )
    ispg = int(header.ispg)
    mz = int(header.mz)
    if 401 <= ispg <= 630 and mz > 0 and nz // mz > 1:
        raise _fail(path, f"is a stack of {nz // mz} volumes (ispg {ispg}); expected one volume")
    nsymbt = int(header.nsymbt)
    if nsymbt < 0:
        raise _fail(path, f"corrupt MRC header: extended header size {nsymbt}")
    dtype = np.dtype(MRC_MODES[mode])
    expected = HEADER_DTYPE.itemsize + nsymbt + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise _fail(
            path,
            f"truncated or corrupt: the header describes {nx} x {ny} x {nz} voxels of mode "
            f"{mode} ({expected} bytes with headers) but the file has only {size} bytes",
        )
    axes = _axis_order(header, path)
    unsigned = False
    if mode == 0:
        # IMOD marks mode-0 files whose bytes are unsigned: imodStamp set, imodFlags bit 0 clear.
        order = header.mode.dtype.byteorder
        if order in ("=", "|"):
            order = "<" if sys.byteorder == "little" else ">"
        stamp, flags = np.frombuffer(raw[152:160], dtype=f"{order}i4").tolist()
        unsigned = stamp == _IMOD_STAMP and not flags & 1
    file_shape = (nz, ny, nx)
    shape_zyx = tuple(file_shape[a] for a in axes)
    return _MrcLayout(
        shape_zyx=shape_zyx,
        file_shape=file_shape,
        dtype=dtype,
        axes=axes,
        unsigned_bytes=unsigned,
        voxel_size=_header_voxel_size(header, path),
    )


def _header_with_byte_order(raw: bytes):
    """The header as a record with the right byte order, following mrcfile's rules.

    mrcfile trusts the machine stamp and, in permissive mode, flips the byte order when the
    mode is invalid; we do the same so that our view and mrcfile's agree.
    """
    header = np.frombuffer(raw, dtype=HEADER_DTYPE).reshape(()).view(np.recarray)
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header.machst)
    except ValueError:
        order = "<"
    header = header.copy()
    header.dtype = header.dtype.newbyteorder(order)
    if int(header.mode) in MRC_MODES:
        return header
    flipped = header.copy()
    flipped.dtype = flipped.dtype.newbyteorder()
    if int(flipped.mode) in MRC_MODES:
        return flipped
    return header


def _axis_order(header, path: Path) -> tuple[int, int, int]:
    """Transpose that turns the stored (sections, rows, columns) array into ZYX."""
    mapc, mapr, maps = int(header.mapc), int(header.mapr), int(header.maps)
    if (mapc, mapr, maps) in ((1, 2, 3), (0, 0, 0)):
        return (0, 1, 2)
    if sorted((mapc, mapr, maps)) != [1, 2, 3]:
        raise _fail(path, f"corrupt MRC header: axis mapping MAPC/MAPR/MAPS = {mapc}/{mapr}/{maps}")
    stored = {maps: 0, mapr: 1, mapc: 2}  # axis number (1=X, 2=Y, 3=Z) -> stored array axis
    return (stored[3], stored[2], stored[1])


def _header_voxel_size(header, path: Path) -> float | None:
    """Å per voxel from cella / mx (X); None when absent; warns when anisotropic."""
    sizes = []
    for cell, n in (
        (header.cella.x, header.mx),
        (header.cella.y, header.my),
        (header.cella.z, header.mz),
    ):
        cell, n = float(cell), int(n)
        sizes.append(cell / n if n > 0 and math.isfinite(cell) and cell > 0 else None)
    if sizes[0] is None:
        return None
    known = [s for s in sizes if s is not None]
    if max(known) - min(known) > 1e-3 * max(known):
        warnings.warn(
            f"{path}: anisotropic voxels ({', '.join(f'{s:g}' for s in known)} Å); using the "
            f"X size {sizes[0]:g} Å",
            InputWarning,
            stacklevel=4,
        )
    return sizes[0]
