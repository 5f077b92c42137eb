"""Tomograms (MRC) and particle tables (RELION STAR, CSV): the one place units and axes change.

Conventions (docs/coordinates.md has the full story, with examples):

- Arrays are **ZYX** voxels. `open_tomogram` returns a read-only ``numpy.memmap``, so a
  multi-GB tomogram costs no RAM until boxes are read from it.
- Particle files are **XYZ**: pixels (0-based voxel centres of the tomogram) for RELION 3/4
  ``rlnCoordinateX/Y/Z`` and CSV ``x,y,z``; Ångström from the tomogram centre for RELION-5
  ``rlnCenteredCoordinateX/Y/ZAngst``, converted as RELION does:
  ``x_px = x_Å / voxel_size + nx / 2`` (float division, see `centred_to_voxels`).
- Class numbers are 1-based (``rlnClassNumber``); 0 means unlabelled.
- Every file written here goes through `atomic_write`: a crash leaves the old file or the new
  one, never half of one.
- Every problem with an input file raises `InputError` (a ``ValueError``) whose message
  names the file and the problem; readers never let another exception type escape on bad
  bytes (the fuzz tests hold them to that).

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import contextlib
import linecache
import math
import os
import re
import secrets
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile
from mrcfile.dtypes import HEADER_DTYPE

__all__ = [
    "DEFAULT_VOXEL_SIZE",
    "MRC_MODES",
    "PARTICLE_COLUMNS",
    "PARTICLE_SOURCES",
    "PARTICLE_SUFFIXES",
    "TOMOGRAM_SUFFIXES",
    "InputError",
    "InputWarning",
    "Tomogram",
    "atomic_write",
    "centred_to_voxels",
    "make_particle_table",
    "open_tomogram",
    "particle_zyx",
    "read_mrc",
    "read_particles",
    "remove_stale_temp_files",
    "replace_star_columns",
    "voxels_to_centred",
    "write_mrc",
    "write_particles",
]

#: Columns of the particle table every module passes around (docs/architecture.md).
PARTICLE_COLUMNS = [
    "x",
    "y",
    "z",
    "class_number",
    "image_name",
    "tomo_name",
    "source",
    "score",
    "probability",
]
#: Where a particle came from.
PARTICLE_SOURCES = ("manual", "auto", "imported", "simulated")
#: Suffixes accepted for tomograms (all MRC files).
TOMOGRAM_SUFFIXES = (".mrc", ".rec", ".map")
#: Suffixes accepted for particle files.
PARTICLE_SUFFIXES = (".star", ".csv")
#: MRC modes we read, with their numpy dtypes (MRC2014; mode 6 is IMOD's uint16).
MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
#: Voxel size (Å) assumed when an MRC header has none; a warning says so.
DEFAULT_VOXEL_SIZE = 1.0

_FLOAT_COLUMNS = ("x", "y", "z", "score", "probability")
_TEXT_COLUMNS = ("image_name", "tomo_name", "source")

# RELION labels.
_COORD = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
_CENTRED = (
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
)
_ORIGINS = (
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnOriginZAngst",
    "rlnOriginX",
    "rlnOriginY",
    "rlnOriginZ",
)
_IMAGE = "rlnImageName"
_TOMO = "rlnTomoName"
_MICROGRAPH = "rlnMicrographName"
_CLASS = "rlnClassNumber"
_PROBABILITY = "rlnMaxValueProbDistribution"
_SCORE = "rlnAutopickFigureOfMerit"
_KNOWN_STAR = (*_COORD, *_CENTRED, _IMAGE)  # a particle block needs at least one of these

# starfile reads these tokens as missing values, whatever the column.
_STAR_NA_TOKENS = frozenset({"nan", "NaN", "<NA>"})
# Characters that cannot survive a STAR round trip through starfile/pandas: quotes are
# rewritten, '#' starts a comment, whitespace other than ' ' splits or ends the row.
_STAR_BAD_CHARS = re.compile(r"[\"'#\x00-\x1f\x7f]")
_IMOD_STAMP = 1146047817  # 'IMOD' in the header's imodStamp field (bytes 152-155)


# ----------------------------------------------------------------------------------- errors


class InputError(ValueError):
    """A bad input file or argument; the message names the file and the problem.

    The CLI prints it as one line and exits with code 2; the widgets show it as a
    notification.
    """


class InputWarning(UserWarning):
    """An input file was usable but something was assumed (e.g. a missing voxel size)."""


def _fail(path: Any, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


# ----------------------------------------------------------------------------- atomic write


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file all-or-nothing: yield a temporary path beside `path`, then replace it.

    The caller writes the complete file to the yielded path (any library that takes a file
    name works: starfile, mrcfile, torch.save, pandas). On success the temporary file is
    fsync'ed, renamed over `path` with ``os.replace`` (atomic on POSIX and Windows within
    one folder) and the folder is fsync'ed, so after a crash or ``kill -9`` at any moment
    `path` holds either the old or the new content, never a mixture. On error the temporary
    file is removed and the exception propagates; `path` is untouched.

    The temporary name keeps the suffix of `path` (``.picks.star.<pid>-<random>.tmp.star``)
    so that libraries that choose a format from the suffix still do the right thing, and
    carries the writer's process id so that `remove_stale_temp_files` can clean up after a
    killed writer.

    Args:
        path: the destination file. Its folder must exist.

    Yields:
        The temporary path to write to (not created yet).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened for fsync on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(path: str | os.PathLike) -> int:
    """Delete temporary files that a killed `atomic_write` left beside `path`.

    Only files named like `atomic_write`'s temporaries for this exact `path`, whose writer
    process no longer exists, are removed; a live writer's file is never touched.

    Returns:
        How many files were removed.
    """
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.tmp{re.escape(path.suffix)}$"
    )
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave it
    return True


# ---------------------------------------------------------------------------------- tomograms


@dataclass(eq=False)
class Tomogram:
    """A tomogram on disk, memory-mapped.

    Attributes:
        path: the MRC file.
        data: ZYX voxels, a read-only ``numpy.memmap`` for opened files (any ZYX array is
            accepted, e.g. in tests). Reading a box reads only that box from disk.
        voxel_size: Å per voxel (isotropic).
    """

    path: Path
    data: np.ndarray
    voxel_size: float

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
    """Open an MRC tomogram memory-mapped and read-only, after validating it.

    Reads the header with mrcfile's definitions and checks it against the file size before
    mapping anything, so a corrupt or truncated file fails fast with a clear message and a
    forged header cannot make us allocate memory. The data are not read: only the central
    Z slice of a floating-point volume is checked for NaN/Inf (a cheap check; whole boxes
    are checked when extracted).

    Modes 0, 1, 2, 6, 12 (int8, int16, float32, uint16, float16) are accepted; IMOD mode-0
    files that mark their bytes as unsigned are read as uint8. Files whose header maps axes
    in a non-standard order (MAPC/MAPR/MAPS) are transposed (a view) to ZYX.

    Args:
        path: ``.mrc``, ``.rec`` or ``.map`` file (any MRC file is accepted).

    Returns:
        A `Tomogram` whose ``data`` is a read-only ZYX ``numpy.memmap``. The mapping stays
        valid after the file handle is closed; no file descriptor is kept open.

    Raises:
        InputError: missing file, not MRC, truncated/corrupt, unsupported mode, 2D image or
            single-slice stack, 4D volume stack, non-finite values in the central slice.

    Warns:
        InputWarning: no usable voxel size in the header (1.0 Å is used) or anisotropic
            voxels (the X size is used).
    """
    path = Path(path)
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


def _positive_float(value, name: str, path: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out > 0):
        raise _fail(path, f"{name} must be a positive number, got {value!r}")
    return out


def _tomogram_shape(shape, path: Any) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
        ok = len(out) == 3 and min(out) > 0 and all(float(s) == int(s) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _fail(
            path, f"tomogram_shape must be three positive integers (Z, Y, X), got {shape!r}"
        )
    return out


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


# ---------------------------------------------------------------------------- particle table


def make_particle_table(
    zyx=None,
    *,
    class_number=None,
    image_name=None,
    source="manual",
    score=None,
    tomo_name="",
    probability=None,
) -> pd.DataFrame:
    """Build a particle table with the canonical columns and dtypes.

    Scalars are broadcast to every particle; sequences must have one value per particle.
    The number of particles comes from `zyx`, else from the first sequence given.

    Args:
        zyx: (N, 3) centres in tomogram voxels, ZYX order; None for standalone subtomograms
            (coordinates NaN).
        class_number: 1-based classes, 0 = unlabelled (default 0).
        image_name: subtomogram file per particle, or "".
        source: one of `PARTICLE_SOURCES`, per particle or for all.
        score: picking score (NaN if none).
        tomo_name: tomogram name per particle or for all.
        probability: predicted class probability (NaN if none).

    Returns:
        DataFrame with columns `PARTICLE_COLUMNS` (x, y, z float64; class_number int64;
        text columns str; score, probability float64), index 0..N-1.

    Raises:
        InputError: wrong shapes or lengths, negative or non-integer classes, unknown source.
    """
    where = "particle table"
    n = None
    if zyx is not None:
        arr = np.asarray(zyx, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise _fail(where, f"coordinates must be (N, 3) ZYX, got shape {arr.shape}")
        n = len(arr)
    if n is None:
        for value in (image_name, class_number, score, probability, source, tomo_name):
            if value is not None and not isinstance(value, str) and np.ndim(value) > 0:
                n = len(value)
                break
        else:
            n = 0
        arr = np.full((n, 3), np.nan)
    classes = _broadcast(0 if class_number is None else class_number, n, "class_number")
    classes = _class_array(classes, where)
    sources = _broadcast(source, n, "source")
    table = pd.DataFrame(
        {
            "x": arr[:, 2].copy(),
            "y": arr[:, 1].copy(),
            "z": arr[:, 0].copy(),
            "class_number": classes,
            "image_name": _text(
                _broadcast("" if image_name is None else image_name, n, "image_name")
            ),
            "tomo_name": _text(_broadcast("" if tomo_name is None else tomo_name, n, "tomo_name")),
            "source": _text(sources),
            "score": _float_array(np.nan if score is None else score, n, "score"),
            "probability": _float_array(
                np.nan if probability is None else probability, n, "probability"
            ),
        },
        columns=PARTICLE_COLUMNS,
    )
    bad = ~table["source"].isin(PARTICLE_SOURCES)
    if bad.any():
        raise _fail(
            where,
            f"unknown source {table['source'][bad].iloc[0]!r}; expected one of {PARTICLE_SOURCES}",
        )
    return table


def particle_zyx(table: pd.DataFrame) -> np.ndarray:
    """The (N, 3) float64 ZYX voxel centres of a particle table (NaN for standalone files)."""
    missing = [c for c in ("x", "y", "z") if c not in table]
    if missing:
        raise _fail("particle table", f"missing coordinate columns {missing}")
    return np.column_stack(
        [table[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("z", "y", "x")]
    ).reshape(len(table), 3)


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, str) or np.ndim(value) == 0:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise _fail("particle table", f"{name} has {len(values)} values for {n} particles")
    return values


def _text(values: Sequence) -> pd.Series:
    out = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
    return pd.Series(out, dtype=str)


def _float_array(value, n: int, name: str) -> np.ndarray:
    try:
        return np.asarray(_broadcast(value, n, name), dtype=np.float64).reshape(n)
    except (TypeError, ValueError) as err:
        raise _fail("particle table", f"{name} must be numbers ({err})") from err


def _class_array(values, where: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise _fail(where, f"class numbers must be integers ({err})") from err
    # Beyond 2^31 a class number is a corrupt value, and int64 would overflow silently.
    bad = ~np.isfinite(arr) | (arr < 0) | (arr != np.round(arr)) | (arr > 2**31 - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(
            where,
            f"class number {values[i]!r} (particle {i}) is not a non-negative integer below "
            "2^31 (classes are 1-based; 0 = unlabelled)",
        )
    return arr.astype(np.int64)


def _canonical(table: pd.DataFrame, where: Any) -> pd.DataFrame:
    """A validated copy of `table` with exactly `PARTICLE_COLUMNS` (missing ones defaulted)."""
    if not isinstance(table, pd.DataFrame):
        raise _fail(
            where, f"expected a particle table (pandas DataFrame), got {type(table).__name__}"
        )
    n = len(table)
    has_xyz = all(c in table for c in ("x", "y", "z"))
    if not has_xyz and "image_name" not in table:
        raise _fail(where, "the particle table has neither x, y, z nor image_name columns")

    def col(name, default):
        return table[name].to_numpy() if name in table else default

    zyx = (
        np.column_stack([np.asarray(table[c], dtype=np.float64) for c in ("z", "y", "x")])
        if has_xyz
        else None
    )
    try:
        out = make_particle_table(
            zyx,
            class_number=col("class_number", 0),
            image_name=col("image_name", [""] * n),
            source=col("source", "manual"),
            score=col("score", np.nan),
            tomo_name=col("tomo_name", ""),
            probability=col("probability", np.nan),
        )
    except InputError as err:
        raise _fail(where, str(err).removeprefix("particle table: ")) from err
    return out


# ------------------------------------------------------------------------------ reading files


def read_particles(
    path: str | os.PathLike,
    *,
    tomogram_shape=None,
    voxel_size=None,
    source: str = "imported",
    allow_missing_geometry: bool = False,
) -> pd.DataFrame:
    """Read a particle file (RELION 3/4/5 STAR, subtomogram STAR, CSV) into a particle table.

    STAR flavours, recognised by their columns (docs/coordinates.md shows each):

    - RELION 3/4: ``rlnCoordinateX/Y/Z`` in pixels, ``rlnTomoName`` or
      ``rlnMicrographName`` naming the tomogram.
    - RELION 5: ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre), converted
      with `tomogram_shape` and `voxel_size` (both required; see `centred_to_voxels`). When
      a file has both kinds, the centred ones are used if the geometry is known.
    - Subtomogram lists: ``rlnImageName`` per particle, one MRC file each; relative names are
      resolved against the STAR file's folder (or, as in a RELION project, the nearest
      parent folder where the first one exists) and stored as absolute paths.
    - ``rlnClassNumber`` (1-based; absent = 0, unlabelled),
      ``rlnMaxValueProbDistribution`` -> probability, ``rlnAutopickFigureOfMerit`` -> score.
    - RELION 3.1+ files with an optics block: the ``particles`` block is read. Other
      columns are ignored. ``rlnOriginX/Y/ZAngst`` shifts are *not* applied (a warning says
      so when they are non-zero).

    CSV: a header row naming ``x,y,z`` (pixels) and optionally ``class`` or
    ``class_number``, ``probability``, ``score``, ``tomo_name``, ``image_name``
    (case-insensitive). A file with only ``image_name`` is a subtomogram list.

    A file with a header but no rows gives an empty table.

    Args:
        path: ``.star`` or ``.csv`` file.
        tomogram_shape: (nz, ny, nx) of the tomogram the coordinates refer to, or a mapping
            tomogram name -> (nz, ny, nx) for files that span several tomograms (names as
            in ``rlnTomoName`` / ``rlnMicrographName``). Needed for RELION-5 files; every
            particle whose tomogram shape is known must lie inside it.
        voxel_size: Å per voxel of that tomogram, or a mapping tomogram name -> Å.
        source: the `source` recorded for every particle.
        allow_missing_geometry: give NaN coordinates (instead of raising) to RELION-5
            particles whose tomogram geometry is not given; for callers that first read a
            file to learn which tomograms it names.

    Returns:
        The particle table (`PARTICLE_COLUMNS`); ``attrs["format"]`` names the flavour read
        ("relion3/4", "relion5", "subtomograms", "csv") and ``attrs["voxel_size"]`` the
        voxel size used or found in the file (absent when unknown).

    Raises:
        InputError: missing/unreadable/empty file, no particle block or no known columns,
            partial or non-numeric coordinates, bad class numbers, RELION-5 coordinates
            without geometry, coordinates outside the tomogram, image stacks (``n@file``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PARTICLE_SUFFIXES:
        raise _fail(path, f"unsupported particle file type {suffix!r}; expected .star or .csv")
    geometry = _Geometry(tomogram_shape, voxel_size, path)
    if source not in PARTICLE_SOURCES:
        raise _fail(path, f"unknown source {source!r}; expected one of {PARTICLE_SOURCES}")
    if suffix == ".star":
        table, attrs = _read_star_particles(path, geometry, source, allow_missing_geometry)
    else:
        table, attrs = _read_csv_particles(path, source)
    _check_inside(table, geometry, path)
    if geometry.single_voxel_size is not None:
        attrs["voxel_size"] = geometry.single_voxel_size
    table.attrs.update(attrs)
    return table


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


def _read_text(path: Path, kind: str) -> str:
    try:
        if path.is_dir():
            raise _fail(path, f"is a folder, not a {kind} file")
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except PermissionError as err:
        raise _fail(path, "cannot read the file (permission denied)") from err
    except OSError as err:
        raise _fail(path, f"cannot read the file ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _fail(path, f"not a {kind} text file (not UTF-8 at byte {err.start})") from err
    if "\x00" in text:
        raise _fail(path, f"not a {kind} text file (contains NUL bytes)")
    return text


def _read_star_blocks(path: Path) -> dict[str, Any]:
    """All data blocks of a STAR file, every value read as text (None-safe).

    Values stay strings so that nothing is lost or reinterpreted (a tomogram called "001"
    stays "001"); callers convert the columns they use. starfile raises assorted exception
    types on malformed text (ValueError, TypeError, pandas parser errors...), so any
    exception from the parser becomes an InputError naming the file.
    """
    text = _read_text(path, "STAR")
    meaningful = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not meaningful:
        raise _fail(path, "empty STAR file (no data blocks)")
    if not any(ln.lstrip().startswith("data_") for ln in meaningful):
        raise _fail(path, "not a STAR file (no 'data_' block)")
    labels = sorted(set(re.findall(r"^[ \t]*_(\S+)", text, flags=re.MULTILINE)))
    # starfile reads lines through linecache; clear it so that an earlier read of the same
    # name (e.g. before an atomic replace, or one that failed midway) cannot leak in.
    linecache.clearcache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=labels)
    except Exception as err:  # noqa: BLE001 - third-party parser, see docstring
        raise _fail(path, f"not a readable STAR file ({type(err).__name__}: {err})") from err
    finally:
        linecache.clearcache()
    if not isinstance(blocks, dict) or not blocks:
        raise _fail(path, "empty STAR file (no data blocks)")
    return blocks


def _block_frame(block) -> pd.DataFrame | None:
    """A loop block as is; a single-row (simple) block as a one-row DataFrame."""
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict) and block:
        return pd.DataFrame({k: [v] for k, v in block.items()})
    return None


def _particle_block_name(blocks: Mapping[str, Any], path: Path) -> str:
    """The block holding particles: ``particles`` if present, else the first with known columns."""
    candidates = []
    if "particles" in blocks:
        candidates.append("particles")
    candidates += [name for name in blocks if name != "particles"]
    for name in candidates:
        frame = _block_frame(blocks[name])
        if frame is not None and any(c in frame.columns for c in _KNOWN_STAR):
            return name
    described = "; ".join(
        f"data_{name}: {', '.join(map(str, frame.columns[:8]))}"
        + (", ..." if len(frame.columns) > 8 else "")
        for name, frame in ((n, _block_frame(b)) for n, b in blocks.items())
        if frame is not None
    )
    raise _fail(
        path,
        "no particle block: no block has rlnCoordinateX/Y/Z, rlnCenteredCoordinateX/Y/ZAngst "
        f"or rlnImageName columns (found {described or 'no columns'})",
    )


def _read_star_particles(
    path: Path, geometry: _Geometry, source: str, allow_missing: bool
) -> tuple[pd.DataFrame, dict]:
    blocks = _read_star_blocks(path)
    name = _particle_block_name(blocks, path)
    frame = _block_frame(blocks[name])
    where = f"{path} (data_{name})"
    dup = [c for c in frame.columns[frame.columns.duplicated()] if c in (*_KNOWN_STAR, _CLASS)]
    if dup:
        raise _fail(where, f"column {dup[0]} appears more than once")
    n = len(frame)
    attrs: dict[str, Any] = {}
    has_px = [c in frame.columns for c in _COORD]
    has_a = [c in frame.columns for c in _CENTRED]
    for labels, present in ((_COORD, has_px), (_CENTRED, has_a)):
        if any(present) and not all(present):
            have = ", ".join(c for c, p in zip(labels, present, strict=True) if p)
            lack = ", ".join(c for c, p in zip(labels, present, strict=True) if not p)
            raise _fail(where, f"has {have} but not {lack}: 3D coordinates need all three")
    images = _star_text(frame, _IMAGE, n)
    tomo = _star_text(frame, _TOMO if _TOMO in frame.columns else _MICROGRAPH, n)
    sizes, voxel = geometry.per_row(tomo)
    known = np.isfinite(sizes).all(axis=1) & np.isfinite(voxel)
    unresolved = np.zeros(n, dtype=bool)
    if all(has_a) and (known.all() or not all(has_px)):
        if not known.all() and not allow_missing:
            i = int(np.flatnonzero(~known)[0])
            if not geometry.given:
                problem = "need the tomogram's shape and voxel size to become voxels: open or "
                problem += "pass the tomogram (tomogram_shape=..., voxel_size=...)"
            else:
                problem = f"need the shape and voxel size of tomogram {tomo[i]!r} (particle "
                problem += f"{i + 1}), which were not given"
            raise _fail(
                where,
                "RELION-5 coordinates (rlnCenteredCoordinateX/Y/ZAngst, Å from the tomogram "
                f"centre) {problem}",
            )
        xyz_a = np.column_stack([_star_float(frame, c, where) for c in _CENTRED]).reshape(n, 3)
        # Same arithmetic as centred_to_voxels (RELION 5: Å / pixel size + size / 2).
        xyz = xyz_a / voxel[:, None] + sizes / 2.0
        unresolved = ~known  # NaN coordinates, kept only with allow_missing_geometry
        attrs["format"] = "relion5"
    elif all(has_px):
        xyz = np.column_stack([_star_float(frame, c, where) for c in _COORD]).reshape(n, 3)
        attrs["format"] = "relion3/4"
    else:
        xyz = np.full((n, 3), np.nan)
        attrs["format"] = "subtomograms"
    missing = ~np.isfinite(xyz).all(axis=1) & (images == "") & ~unresolved
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise _fail(where, f"particle {i + 1} has no finite coordinates and no rlnImageName")
    if any(c in frame.columns for c in _ORIGINS):
        shifts = [_star_float(frame, c, where) for c in _ORIGINS if c in frame.columns]
        if any(np.nan_to_num(s).any() for s in shifts):
            warnings.warn(
                f"{where}: rlnOriginX/Y/Z shifts are not applied; particle centres are the "
                "rlnCoordinate / rlnCenteredCoordinate values as written",
                InputWarning,
                stacklevel=4,
            )
    classes = _star_class(frame, where)
    table = make_particle_table(
        xyz[:, ::-1],
        class_number=classes,
        image_name=_resolve_images(images, path, where),
        source=source,
        score=_star_float(frame, _SCORE, where, finite=False),
        tomo_name=tomo,
        probability=_star_float(frame, _PROBABILITY, where, finite=False),
    )
    pixel = _optics_pixel_size(blocks, attrs["format"])
    if pixel is not None:
        attrs["voxel_size"] = pixel
    return table, attrs


def _star_text(frame: pd.DataFrame, label: str, n: int) -> np.ndarray:
    if label not in frame.columns:
        return np.full(n, "", dtype=object)
    values = frame[label]
    return np.array(["" if pd.isna(v) else str(v) for v in values], dtype=object)


def _star_float(frame: pd.DataFrame, label: str, where: Any, *, finite: bool = True) -> np.ndarray:
    """A numeric column (NaN where absent); non-numbers (and non-finite if `finite`) raise."""
    n = len(frame)
    if label not in frame.columns:
        return np.full(n, np.nan)
    raw = frame[label]
    if raw.dtype.kind in "fiu":
        values = raw.to_numpy(dtype=np.float64)
        bad_text = np.zeros(n, dtype=bool)
    else:
        text = raw.astype(object).where(raw.notna(), None)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad_text = np.isnan(values) & text.notna().to_numpy()
    if bad_text.any():
        i = int(np.flatnonzero(bad_text)[0])
        raise _fail(where, f"particle {i + 1}: {label} = {raw.iloc[i]!r} is not a number")
    if finite:
        # NaN is allowed here (rows that are subtomogram files); infinities never are.
        if np.isinf(values).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise _fail(where, f"particle {i + 1}: {label} is not finite ({values[i]})")
    return values


def _star_class(frame: pd.DataFrame, where: Any) -> np.ndarray:
    if _CLASS not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    values = _star_float(frame, _CLASS, where)
    return _class_array(values, where)


def _optics_pixel_size(blocks: Mapping[str, Any], flavour: str) -> float | None:
    """Pixel size from an optics block, in the unit the coordinates use (if recorded)."""
    optics = _block_frame(blocks.get("optics")) if "optics" in blocks else None
    if optics is None or len(optics) == 0:
        return None
    labels = ("rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize")
    if flavour == "subtomograms":
        labels = ("rlnImagePixelSize",)
    for label in labels:
        if label in optics.columns:
            value = pd.to_numeric(optics[label].astype(object), errors="coerce").iloc[0]
            if value is not None and np.isfinite(value) and value > 0:
                return float(value)
    return None


def _resolve_images(names: np.ndarray, path: Path, where: Any) -> list[str]:
    """Absolute, normalised subtomogram paths; relative names are found from the STAR folder.

    RELION writes names relative to its project folder, which is a parent of the STAR
    file's folder: when the first relative name does not exist next to the STAR file, the
    nearest parent folder where it exists is used for every relative name.
    """
    folder = Path(os.path.abspath(path.parent))
    relative = [n for n in names if n and not os.path.isabs(n)]
    base = folder
    if relative and not (folder / relative[0]).exists():
        for parent in folder.parents:
            if (parent / relative[0]).exists():
                base = parent
                break
    out = []
    for i, name in enumerate(names):
        if not name:
            out.append("")
            continue
        if re.match(r"^\d+@", name):
            raise _fail(
                where,
                f"particle {i + 1}: {name!r} is an image in a stack (n@file); subtomograms "
                "must be one 3D MRC file each",
            )
        out.append(os.path.normpath(os.path.join(base, name)))
    return out


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


def _read_csv_particles(path: Path, source: str) -> tuple[pd.DataFrame, dict]:
    text = _read_text(path, "CSV")
    if not text.strip():
        raise _fail(path, "empty CSV file (a header row x,y,z[,class] is required)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:  # noqa: BLE001 - pandas raises many types on malformed text
        raise _fail(path, f"not a readable CSV file ({type(err).__name__}: {err})") from err
    columns = {}
    for col in frame.columns:
        key = str(col).strip().lower()
        if key in columns:
            raise _fail(path, f"column {key!r} appears more than once")
        columns[key] = col
    has_xyz = [c in columns for c in ("x", "y", "z")]
    if not any(has_xyz) and "image_name" not in columns:
        if all(_is_number(str(c)) for c in frame.columns):
            raise _fail(
                path, "no header row: the first line must name the columns, e.g. x,y,z,class"
            )
        found = ", ".join(map(str, frame.columns[:10]))
        raise _fail(path, f"no x, y, z (or image_name) columns; found: {found}")
    if any(has_xyz) and not all(has_xyz):
        missing = [c for c, p in zip("xyz", has_xyz, strict=True) if not p]
        raise _fail(path, f"missing coordinate column(s) {', '.join(missing)}")
    if "class" in columns and "class_number" in columns:
        raise _fail(path, "has both 'class' and 'class_number' columns; keep one")
    n = len(frame)

    def numbers(key: str, *, finite: bool) -> np.ndarray:
        if key not in columns:
            return np.full(n, np.nan)
        raw = frame[columns[key]].astype(str).str.strip()
        is_na = raw.isin(["", "nan", "NaN", "NA", "<NA>"])
        values = pd.to_numeric(raw.where(~is_na, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.isnan(values) & ~is_na.to_numpy()
        if finite:
            bad |= np.isinf(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(path, f"data row {i + 1}: {key} = {raw.iloc[i]!r} is not a finite number")
        return values

    def texts(key: str) -> np.ndarray:
        if key not in columns:
            return np.full(n, "", dtype=object)
        return frame[columns[key]].astype(str).to_numpy(dtype=object)

    xyz = np.column_stack([numbers(c, finite=True) for c in "xyz"]).reshape(n, 3)
    images = texts("image_name")
    missing = ~np.isfinite(xyz).all(axis=1) & (images == "")
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise _fail(path, f"data row {i + 1} has no coordinates and no image_name")
    class_key = "class_number" if "class_number" in columns else "class"
    raw_classes = numbers(class_key, finite=True)
    if np.isnan(raw_classes).any() and class_key in columns:
        i = int(np.flatnonzero(np.isnan(raw_classes))[0])
        raise _fail(path, f"data row {i + 1}: {class_key} is empty (use 0 for unlabelled)")
    classes = np.nan_to_num(raw_classes, nan=0.0)
    table = make_particle_table(
        xyz[:, ::-1],
        class_number=_class_array(classes, path),
        image_name=_resolve_images(images, path, path),
        source=source,
        score=numbers("score", finite=False),
        tomo_name=texts("tomo_name"),
        probability=numbers("probability", finite=False),
    )
    return table, {"format": "csv"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------ writing files


def write_particles(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    voxel_size: float | None = None,
    tomogram_shape=None,
    relion5: bool = False,
) -> None:
    """Write a particle table as a RELION STAR or a CSV file (by suffix), atomically.

    STAR (RELION-4 style unless `relion5`), one ``data_particles`` block with:
    ``rlnCoordinateX/Y/Z`` (pixels; omitted only for a pure subtomogram list),
    ``rlnClassNumber`` when any particle is labelled, ``rlnMaxValueProbDistribution`` when
    any probability is set, ``rlnAutopickFigureOfMerit`` when any score is set,
    ``rlnImageName`` when any particle has a file (relative to the STAR folder when inside
    it), ``rlnTomoName`` when any particle names a tomogram. With ``relion5=True`` the
    coordinates are written as ``rlnCenteredCoordinateX/Y/ZAngst`` instead.

    CSV: ``x,y,z,class`` plus ``probability``, ``score``, ``tomo_name``, ``image_name``
    when set. Numbers are written with full precision so reading gives back the same table.

    Args:
        table: particle table (`PARTICLE_COLUMNS`; missing optional columns take defaults).
        path: destination ``.star`` or ``.csv`` (its folder must exist).
        voxel_size: Å per voxel (needed for ``relion5``).
        tomogram_shape: (nz, ny, nx) (needed for ``relion5``).
        relion5: write RELION-5 centred Å coordinates.

    Raises:
        InputError: unsupported suffix, invalid table, RELION-5 without geometry, names that
            a STAR file cannot hold (quotes, '#', tabs or line breaks).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PARTICLE_SUFFIXES:
        raise _fail(path, f"unsupported particle file type {suffix!r}; expected .star or .csv")
    t = _canonical(table, path)
    images = _relative_images(t["image_name"].tolist(), path)
    if suffix == ".csv":
        if relion5:
            raise _fail(path, "relion5=True applies to STAR files only (CSV holds pixels)")
        frame = pd.DataFrame({"x": t["x"], "y": t["y"], "z": t["z"], "class": t["class_number"]})
        if t["probability"].notna().any():
            frame["probability"] = t["probability"]
        if t["score"].notna().any():
            frame["score"] = t["score"]
        if (t["tomo_name"] != "").any():
            frame["tomo_name"] = t["tomo_name"]
        if any(images):
            frame["image_name"] = images
        with atomic_write(path) as tmp:
            frame.to_csv(tmp, index=False, na_rep="nan")
        return
    frame = _star_particle_frame(t, images, path, voxel_size, tomogram_shape, relion5)
    with atomic_write(path) as tmp:
        starfile.write({"particles": frame}, tmp, float_format=None, na_rep="nan")


def _star_particle_frame(t, images, path, voxel_size, tomogram_shape, relion5) -> pd.DataFrame:
    n = len(t)
    xyz = t[["x", "y", "z"]].to_numpy(dtype=np.float64)
    has_image = np.array([bool(s) for s in images], dtype=bool)
    bad = ~np.isfinite(xyz).all(axis=1) & ~has_image
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"particle {i + 1} has neither finite coordinates nor an image_name")
    write_coords = not (n > 0 and has_image.all() and np.isnan(xyz).all())
    columns: dict[str, Any] = {}
    if write_coords:
        if relion5:
            if tomogram_shape is None or voxel_size is None:
                raise _fail(
                    path,
                    "relion5=True needs tomogram_shape and voxel_size to write centred Å "
                    "coordinates",
                )
            shape = _tomogram_shape(tomogram_shape, path)
            vs = _positive_float(voxel_size, "voxel_size", path)
            centred = voxels_to_centred(xyz, shape, vs)
            for i, label in enumerate(_CENTRED):
                columns[label] = centred[:, i]
        else:
            for i, label in enumerate(_COORD):
                columns[label] = xyz[:, i]
    if (t["class_number"] > 0).any():
        columns[_CLASS] = t["class_number"].to_numpy(dtype=np.int64)
    if t["probability"].notna().any():
        columns[_PROBABILITY] = t["probability"].to_numpy(dtype=np.float64)
    if t["score"].notna().any():
        columns[_SCORE] = t["score"].to_numpy(dtype=np.float64)
    if has_image.any():
        names = [_star_safe(s, _IMAGE, path, allow_empty=True) for s in images]
        if not columns:  # the name starts the row: a leading "data_" would open a new block
            names = [f"./{s}" if s.startswith("data_") else s for s in names]
        columns[_IMAGE] = names
    if (t["tomo_name"] != "").any():
        columns[_TOMO] = [_star_safe(s, _TOMO, path, allow_empty=True) for s in t["tomo_name"]]
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


def _relative_images(names: list[str], path: Path) -> list[str]:
    """Image paths as written: relative to the file's folder when inside it, else as given."""
    folder = os.path.abspath(path.parent)
    out = []
    for name in names:
        if name and os.path.isabs(name):
            rel = os.path.relpath(name, folder)
            if not rel.startswith(os.pardir):
                name = rel
        out.append(name)
    return out


def _star_safe(value: str, label: str, path: Any, *, allow_empty: bool = False) -> str:
    """`value` if a STAR file can hold it unchanged through starfile, else an InputError."""
    if not value and allow_empty:
        return value
    if not value or _STAR_BAD_CHARS.search(value) or value in _STAR_NA_TOKENS:
        raise _fail(
            path,
            f"{label} {value!r} cannot be stored in a STAR file (empty, quotes, '#', tabs, "
            "line breaks or a missing-value token like 'nan'); rename it",
        )
    return value


def replace_star_columns(
    source: str | os.PathLike,
    out: str | os.PathLike,
    columns: Mapping[str, Sequence],
) -> None:
    """Copy a STAR file, setting some columns of its particle block, atomically.

    Every other block, column and value is kept as written (values are carried as text),
    so angles, optics groups and names survive unchanged; this is how predictions are
    written back into a user's RELION file.

    Args:
        source: STAR file to copy.
        out: destination (may be `source`).
        columns: label -> one value per particle (ints stay ints, floats are written with
            full precision, NaN as ``nan``).

    Raises:
        InputError: `source` unreadable or without a particle block, or a column whose
            length differs from the number of particles.
    """
    source, out = Path(source), Path(out)
    blocks = dict(_read_star_blocks(source))
    name = _particle_block_name(blocks, source)
    frame = _block_frame(blocks[name]).copy()
    for label, values in columns.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or len(arr) != len(frame):
            raise _fail(
                source,
                f"{len(arr) if arr.ndim == 1 else arr.shape} values for {label} but the file "
                f"lists {len(frame)} particles",
            )
        frame[label] = [_format_value(v) for v in arr.tolist()]
    blocks[name] = frame
    with atomic_write(out) as tmp:
        starfile.write(blocks, tmp, float_format=None, na_rep="nan")


def _format_value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)
