"""OME-Zarr tomograms: the multiscale metadata checked, the arrays opened lazily.

An OME-Zarr image (NGFF 0.4 on Zarr v2, or 0.5 on Zarr v3) is a folder: a group whose
``multiscales`` metadata lists one array per resolution level, finest first, each with a
``scale`` in the units of its axes. `napari_cryossl.io.open_tomogram` opens it through
`read_ome_zarr` into the same `Tomogram` as an MRC file:

- ``data`` is level 0 as a `ChunkedVolume`: nothing is read until a region is sliced, a
  slice reads (and decompresses) only the chunks it overlaps, one chunk at a time, and the
  most recently decoded chunks are kept (within `CHUNK_CACHE_BYTES`) for the next slices;
- ``levels`` holds every level (finest first) for viewers (napari shows them as a
  multiscale image);
- ``voxel_size`` is level 0's scale (the dataset's ``scale`` times the multiscale's own, if
  any) converted to Å from the axes' unit (``angstrom``, ``nanometer``, ``micrometer``...).
  Translations are ignored: particle coordinates are voxel indices of level 0, as for MRC.

Only 3D images with the axes ``z, y, x`` (in that order) are read; time and channel axes,
2D images, plates and label images are refused with an `InputError` that says why. A
``bioformats2raw`` folder (the image in its series ``0``) is followed to that image.

zarr is an optional dependency (``pip install "napari-cryossl[zarr]"``), imported only
when an OME-Zarr image is opened.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cryossl.io.errors import InputError, InputWarning, _fail

#: The folder suffix of Zarr stores (``tomogram.zarr``).
ZARR_SUFFIX = ".zarr"

#: Length units of NGFF axes (UDUNITS-2 names, as the specification lists them, and the
#: usual symbols) in Å.
UNIT_TO_ANGSTROM = {
    "angstrom": 1.0,
    "ångström": 1.0,
    "å": 1.0,
    "picometer": 0.01,
    "pm": 0.01,
    "nanometer": 10.0,
    "nm": 10.0,
    "micrometer": 1e4,
    "micron": 1e4,
    "µm": 1e4,
    "um": 1e4,
    "millimeter": 1e7,
    "mm": 1e7,
    "centimeter": 1e8,
    "decimeter": 1e9,
    "meter": 1e10,
    "m": 1e10,
}

#: Decoded chunks kept per opened tomogram, at most. Boxes are read in chunk order, so
#: neighbours find their chunks here instead of decompressing them again; with the CZ
#: cryoET Data Portal's 256³ chunks (64 MiB of float32 each) a box read from disk costs up
#: to 8 of them. Small enough that picking or extracting from a 2 GiB tomogram in 64³
#: chunks stays below a quarter of its size in RAM (docs/benchmarks.md).
CHUNK_CACHE_BYTES = 128 * 1024**2

_INSTALL_HINT = 'reading OME-Zarr needs zarr: pip install "napari-cryossl[zarr]"'


@dataclass(frozen=True)
class OmeZarrImage:
    """What `read_ome_zarr` found: the levels, lazily, and level 0's voxel size.

    Attributes:
        levels: one ``zarr.Array`` (ZYX) per resolution level, finest first (for viewers;
            `ChunkedVolume` reads level 0 for computations).
        voxel_size: Å per voxel of level 0 (X when anisotropic, with a warning), or None
            when the metadata give no scale.
        version: the NGFF version the metadata declare ("" when they declare none).
    """

    levels: tuple
    voxel_size: float | None
    version: str


class ChunkedVolume:
    """A chunked array (level 0 of an OME-Zarr image) read one chunk at a time, keeping the
    most recently decoded chunks.

    Reading a region through zarr directly decodes all the chunks it overlaps at once (up to
    eight 64 MiB chunks for one 32³ box in 256³ chunks) and decodes them again for the next
    box. Here every region is assembled chunk by chunk, so at most one chunk is being decoded
    at a time, and the decoded chunks stay in a least-recently-used cache of at most
    ``cache_bytes``, counting the chunk being decoded (strided reads go around it). The
    voxels are exactly zarr's. Thread-safe; pickles without its cache.

    Attributes:
        array: the underlying ``zarr.Array``.
        shape, ndim, dtype, chunks: as the array's (``chunks`` is the chunk shape).
        cache_bytes: the cache's budget.
    """

    def __init__(self, array, cache_bytes: int | None = None) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(min(int(c), s) for c, s in zip(array.chunks, self.shape, strict=True))
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        if cache_bytes is None:
            cache_bytes = min(CHUNK_CACHE_BYTES, nbytes)
        self.cache_bytes = int(cache_bytes)
        self._chunk_bytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ChunkedVolume({self.array!r}, chunks {self.chunks}, cache "
            f"{self._cached_bytes / 1024**2:.0f}/{self.cache_bytes / 1024**2:.0f} MiB)"
        )

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {"array": self.array, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["array"], state["cache_bytes"])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        index, squeeze = self._normalise(key)
        starts = [s.start for s in index]
        stops = [s.stop for s in index]
        steps = [s.step for s in index]
        out_shape = tuple(len(range(a, b, k)) for a, b, k in zip(starts, stops, steps, strict=True))
        out = np.empty(out_shape, dtype=self.dtype)
        if 0 in out_shape:
            return out[squeeze]
        grid = [
            range(a // c, (b - 1) // c + 1)
            for a, b, c in zip(starts, stops, self.chunks, strict=True)
        ]
        # every chunk through the cache (each copied out at once, so a region may span more
        # chunks than the cache holds); strided reads (thumbnails) go around it
        cached = all(k == 1 for k in steps) and self._chunk_bytes <= self.cache_bytes
        for chunk in itertools.product(*grid):
            # the part of the request inside this chunk: voxels a..b (stepping from `starts`)
            src, dst = [], []
            for ax, c in enumerate(chunk):
                lo, hi = c * self.chunks[ax], min((c + 1) * self.chunks[ax], self.shape[ax])
                a, k = starts[ax], steps[ax]
                first = max(lo, a) if k == 1 else a + -(-(max(lo, a) - a) // k) * k
                last = min(hi, stops[ax])
                if first >= last:
                    break
                n = len(range(first, last, k))
                src.append(slice(first, first + (n - 1) * k + 1, k))
                dst.append(slice((first - a) // k, (first - a) // k + n))
            else:
                if cached:
                    block = self._chunk(chunk)
                    offset = [c * e for c, e in zip(chunk, self.chunks, strict=True)]
                    local = tuple(
                        slice(s.start - o, s.stop - o, s.step)
                        for s, o in zip(src, offset, strict=True)
                    )
                    out[tuple(dst)] = block[local]
                else:
                    out[tuple(dst)] = self.array[tuple(src)]
        return out[squeeze]

    def clear_cache(self) -> None:
        """Forget every cached chunk."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    def _chunk(self, chunk: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            block = self._cache.get(chunk)
            if block is not None:
                self._cache.move_to_end(chunk)
                return block
        region = tuple(
            slice(c * e, min((c + 1) * e, s))
            for c, e, s in zip(chunk, self.chunks, self.shape, strict=True)
        )
        with self._lock:
            # Make room before decoding, not after: the decoded chunk and zarr's transient
            # buffers then never sit beside a full cache (with 256³ chunks of 64 MiB that
            # is the difference between meeting a RAM budget and missing it).
            self._evict_for(self._chunk_bytes)
        block = np.asarray(self.array[region])
        with self._lock:
            if chunk not in self._cache and block.nbytes <= self.cache_bytes:
                self._evict_for(block.nbytes)
                self._cache[chunk] = block
                self._cached_bytes += block.nbytes
        return block

    def _evict_for(self, nbytes: int) -> None:
        """Drop the least recently used chunks until `nbytes` more fit (lock held)."""
        while self._cache and self._cached_bytes + nbytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes

    def _normalise(self, key) -> tuple[list[slice], tuple]:
        """Basic indexing (ints, slices with positive steps, Ellipsis) as one slice per axis
        with explicit start/stop/step, and the index that drops the integer axes."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-dimensional volume")
        key = key + (slice(None),) * (self.ndim - len(key))
        index, squeeze = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 1:
                    raise IndexError("only positive slice steps are supported")
                stop = max(stop, start)
                index.append(slice(start, stop, step))
                squeeze.append(slice(None))
            else:
                try:
                    i = int(k)
                except TypeError:
                    raise IndexError(f"unsupported index {k!r} (ints and slices only)") from None
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for an axis of size {n}")
                i %= n
                index.append(slice(i, i + 1, 1))
                squeeze.append(0)
        return index, tuple(squeeze)


def _is_zarr_path(path) -> bool:
    """Whether `path` should be opened as Zarr: a ``.zarr`` name or a folder."""
    path = Path(path)
    return path.suffix.lower() == ZARR_SUFFIX or path.is_dir()


def read_ome_zarr(path) -> OmeZarrImage:
    """Check an OME-Zarr image's metadata and open its levels without reading voxels.

    Args:
        path: the image's folder (``.zarr``), or a ``bioformats2raw`` folder whose series
            ``0`` is the image.

    Returns:
        An `OmeZarrImage`.

    Raises:
        InputError: a missing path, zarr not installed, not a Zarr group, no ``multiscales``
            metadata (a plain array, a plate, a well), axes other than ``z, y, x`` (2D, time
            or channel axes, another order), a level that is missing or not a 3D real-valued
            array, a scale that is not positive or a unit that is not a length.

    Warns:
        InputWarning: axes without a unit (the scale is taken as Å) or anisotropic voxels
            (the X size is used).
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file or folder")
    if not path.is_dir():
        raise _fail(
            path,
            "is a file; an OME-Zarr image is a folder (zipped Zarr stores are not supported)",
        )
    metadata = [n for n in ("zarr.json", ".zgroup", ".zarray", ".zattrs") if (path / n).is_file()]
    if not metadata:
        raise _fail(
            path,
            "is a folder but not a Zarr store (no zarr.json or .zgroup); tomograms are MRC "
            "files or OME-Zarr folders",
        )
    try:
        import zarr
    except ImportError as err:
        raise _fail(path, _INSTALL_HINT) from err

    group = _open_group(zarr, path)
    attrs = _attributes(group, path)
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
        group, attrs, path = _bioformats2raw_image(zarr, group, path)
    multiscale = _multiscale(attrs, path)
    axes = _spatial_axes(multiscale, path)
    datasets = multiscale["datasets"]
    levels = tuple(_level(group, d, i, path) for i, d in enumerate(datasets))
    base = levels[0].shape
    for i, level in enumerate(levels[1:], start=1):
        if any(s > b for s, b in zip(level.shape, base, strict=True)):
            raise _fail(
                path,
                f"resolution level {i} ({datasets[i]['path']!r}, shape "
                f"{_fmt(level.shape)}) is larger than level 0 ({_fmt(base)}); levels must be "
                "listed finest first",
            )
    if base[0] < 2:
        raise _fail(
            path,
            f"is a 2D image ({base[2]} x {base[1]}, one section), not a 3D volume; tomograms "
            "must have several Z sections",
        )
    voxel_size = _voxel_size(multiscale, axes, path)
    _check_coarsest(levels[-1], path)
    version = str(multiscale.get("version") or attrs.get("version") or "")
    return OmeZarrImage(levels=levels, voxel_size=voxel_size, version=version)


def is_ome_zarr_volume(path) -> bool:
    """Whether a folder holds an OME-Zarr image with the axes z, y, x (reads the metadata only).

    False for anything else (no folder, not Zarr, no ``multiscales``, 2D, time or channel
    axes), so that a viewer can leave those to other readers. True when zarr is not
    installed, so that opening the folder says how to install it.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        import zarr
    except ImportError:
        return True
    try:
        group = _open_group(zarr, path)
        attrs = _attributes(group, path)
        if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
            group, attrs, path = _bioformats2raw_image(zarr, group, path)
        _spatial_axes(_multiscale(attrs, path), path)
    except InputError:
        return False
    return True


# ----------------------------------------------------------------------------------------------


def _open_group(zarr, path: Path):
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as err:  # zarr raises many types for unreadable metadata
        raise _fail(path, f"cannot open the Zarr store ({type(err).__name__}: {err})") from err
    if not isinstance(node, zarr.Group):
        raise _fail(
            path,
            f"is a Zarr array (shape {_fmt(node.shape)}) without OME-Zarr metadata; expected "
            "an OME-Zarr image (a group with 'multiscales' metadata and the voxel size)",
        )
    return node


def _attributes(group, path: Path) -> dict:
    try:
        attrs = dict(group.attrs)
    except Exception as err:
        raise _fail(path, f"cannot read the Zarr attributes ({err})") from err
    ome = attrs.get("ome")
    if isinstance(ome, dict):  # NGFF 0.5 keeps its metadata under "ome"
        return {**{k: v for k, v in attrs.items() if k != "ome"}, **ome}
    return attrs


def _bioformats2raw_image(zarr, group, path: Path):
    """The image in series 0 of a bioformats2raw folder."""
    try:
        child = group["0"]
    except Exception:
        child = None
    if child is None or not isinstance(child, zarr.Group):
        raise _fail(path, "is a bioformats2raw folder without an image in series '0'")
    return child, _attributes(child, path / "0"), path / "0"


def _multiscale(attrs: dict, path: Path) -> dict:
    multiscales = attrs.get("multiscales")
    if multiscales is None:
        for key, what in (("plate", "plate"), ("well", "well"), ("image-label", "label image")):
            if key in attrs:
                raise _fail(path, f"is an OME-Zarr {what}, not an image of a tomogram")
        found = ", ".join(sorted(attrs)[:8]) or "none"
        raise _fail(
            path,
            f"is a Zarr group without OME-Zarr 'multiscales' metadata (attributes: {found}); "
            "expected an OME-Zarr image",
        )
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise _fail(path, "has malformed 'multiscales' metadata (expected a list of objects)")
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise _fail(path, "the 'multiscales' metadata list no datasets (resolution levels)")
    for i, d in enumerate(datasets):
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            raise _fail(path, f"dataset {i} of 'multiscales' has no 'path'")
    return multiscale


def _spatial_axes(multiscale: dict, path: Path) -> list[dict]:
    """The axes as dicts (name, type, unit), checked to be z, y, x."""
    axes = multiscale.get("axes")
    if axes is None:
        raise _fail(
            path,
            f"the multiscales metadata have no 'axes' (NGFF {multiscale.get('version', '?')}); "
            "NGFF 0.4 or later is needed to know the axes and their unit",
        )
    if not isinstance(axes, list):
        raise _fail(path, "the multiscales 'axes' are not a list")
    out = []
    for axis in axes:
        if isinstance(axis, str):  # NGFF 0.3
            axis = {"name": axis}
        if not isinstance(axis, dict) or not isinstance(axis.get("name"), str):
            raise _fail(path, f"malformed axis {axis!r} in the multiscales metadata")
        out.append(axis)
    names = [a["name"].lower() for a in out]
    if names == ["z", "y", "x"]:
        return out
    listed = ", ".join(a["name"] for a in out)
    if sorted(names) == ["y", "x"] or sorted(names) == ["x", "y"]:
        raise _fail(path, f"is a 2D image (axes {listed}), not a 3D volume")
    if sorted(names) == ["x", "y", "z"]:
        raise _fail(
            path,
            f"has its axes in the order {listed}; only z, y, x (NGFF's order) is read",
        )
    raise _fail(
        path,
        f"has the axes {listed}; only 3D images with the axes z, y, x are read (no time or "
        "channel axes)",
    )


def _level(group, dataset: dict, index: int, path: Path):
    name = dataset["path"]
    try:
        array = group[name]
    except Exception as err:
        raise _fail(
            path, f"resolution level {index} ({name!r}) is listed but missing ({err})"
        ) from err
    shape = getattr(array, "shape", None)
    if shape is None or not hasattr(array, "dtype"):
        raise _fail(path, f"resolution level {index} ({name!r}) is not an array")
    if len(shape) != 3:
        raise _fail(
            path,
            f"resolution level {index} ({name!r}) has {len(shape)} dimensions "
            f"({_fmt(shape)}) for the 3 axes z, y, x",
        )
    if min(shape) < 1:
        raise _fail(path, f"resolution level {index} ({name!r}) is empty ({_fmt(shape)})")
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uif":
        raise _fail(
            path,
            f"resolution level {index} ({name!r}) has voxels of type {dtype}; expected "
            "integers or floating point",
        )
    return array


def _voxel_size(multiscale: dict, axes: list[dict], path: Path) -> float | None:
    """Å per voxel of level 0: its scale (times the multiscale's own) in the axes' units."""
    scale = _scale_of(multiscale["datasets"][0].get("coordinateTransformations"), path, "level 0")
    outer = _scale_of(multiscale.get("coordinateTransformations"), path, "the multiscale")
    if scale is None and outer is None:
        return None
    scale = np.ones(3) if scale is None else scale
    if outer is not None:
        scale = scale * outer
    units = [a.get("unit") for a in axes]
    factors = []
    for axis, unit in zip(axes, units, strict=True):
        if unit is None:
            factors.append(1.0)
            continue
        factor = UNIT_TO_ANGSTROM.get(str(unit).strip().lower())
        if factor is None:
            raise _fail(
                path,
                f"axis {axis['name']} has the unit {unit!r}, which is not a length unit read "
                "here (use angstrom, nanometer or micrometer)",
            )
        factors.append(factor)
    if any(u is None for u in units):
        warnings.warn(
            f"{path}: the axes have no unit; reading the scale {_fmt_floats(scale)} as Å",
            InputWarning,
            stacklevel=4,
        )
    sizes = [float(s) * f for s, f in zip(scale, factors, strict=True)]  # z, y, x
    if max(sizes) - min(sizes) > 1e-3 * max(sizes):
        warnings.warn(
            f"{path}: anisotropic voxels (z, y, x = {_fmt_floats(sizes)} Å); using the X size "
            f"{sizes[2]:g} Å",
            InputWarning,
            stacklevel=4,
        )
    return sizes[2]


def _scale_of(transformations, path: Path, where: str) -> np.ndarray | None:
    if transformations is None:
        return None
    if not isinstance(transformations, list):
        raise _fail(path, f"the coordinateTransformations of {where} are not a list")
    scales = [t for t in transformations if isinstance(t, dict) and t.get("type") == "scale"]
    if not scales:
        return None
    t = scales[0]
    if "scale" not in t:
        if "path" in t:
            raise _fail(path, f"the scale of {where} is stored in a separate array; not supported")
        raise _fail(path, f"the scale transformation of {where} has no 'scale' values")
    try:
        values = np.asarray(t["scale"], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.shape != (3,) or not (np.isfinite(values).all() and (values > 0).all()):
        raise _fail(
            path,
            f"the scale of {where} must be three positive numbers (z, y, x), got {t['scale']!r}",
        )
    return values


def _check_coarsest(level, path: Path) -> None:
    """Non-finite voxels in the central Z section of the coarsest level (a cheap check, as
    for MRC files; a NaN in the data usually reaches the downsampled levels)."""
    if np.dtype(level.dtype).kind != "f":
        return
    z = level.shape[0] // 2
    try:
        plane = ChunkedVolume(level, cache_bytes=0)[z]  # one chunk decoded at a time
    except Exception as err:
        raise _fail(path, f"cannot read the Zarr data ({type(err).__name__}: {err})") from err
    if not np.isfinite(plane).all():
        raise InputError(
            f"{path}: non-finite voxels (NaN or Inf) in the data (in the central section of "
            "its coarsest level); the tomogram is corrupt or was written with masked values"
        )


def _fmt(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _fmt_floats(values) -> str:
    return ", ".join(f"{float(v):g}" for v in values)
