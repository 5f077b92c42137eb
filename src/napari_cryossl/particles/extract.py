"""Subtomogram boxes around coordinates, read box by box from a memory-mapped tomogram.

Conventions (the ones a user must know to line boxes up with other software):

- **Centres** are ZYX voxel coordinates (the particle table's x, y, z reversed) and are
  rounded to the **nearest voxel** (``floor(c + 0.5)``: halves round up). No
  interpolation: the classifier is trained with shift augmentation, and resampling would
  blur high-resolution noise differently from box to box.
- **Box placement**: a box of edge ``L = box_size · binning`` covers
  ``[c - L//2, c - L//2 + L)`` along each axis, so the centre voxel sits at index ``L//2``
  (RELION's convention for even boxes).
- **Binning** averages ``binning³`` blocks (average pooling); ``box_size`` is the edge of
  the *binned* box, so the voxel size of the boxes is ``binning · voxel_size``.
- **Edges**: a box that does not fit in the tomogram is, with ``edge="pad"`` (default),
  filled outside the tomogram with the mean of its in-bounds voxels (which becomes exactly 0
  after normalisation, so padding adds no structure); with ``edge="skip"`` it is returned
  as zeros; with ``edge="error"`` an `InputError` is raised. In every mode the returned
  ``inside`` mask says which boxes lie entirely within the tomogram.
- **Normalisation** (``normalise=True``): each box gets zero mean and unit standard
  deviation; a constant box becomes zeros instead of dividing by 0.

Memory: only one box is read at a time, and boxes are read in z order (then y, x) so
that reads from a memory-mapped file on disk are close to sequential; results come back
in the caller's order. From a chunked array (an OME-Zarr tomogram's
`napari_cryossl.io.omezarr.ChunkedVolume`) a box reads and decompresses only the chunks it
overlaps, and boxes are visited chunk by chunk so that neighbours reuse the decoded chunks
the volume keeps. `iter_subtomogram_batches` streams particle sets that do not fit in RAM.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

from napari_cryossl.io import InputError

__all__ = ["extract_subtomograms", "iter_subtomogram_batches", "normalise_subtomograms"]

_EDGE_MODES = ("pad", "skip", "error")


def extract_subtomograms(
    volume,
    centers_zyx,
    box_size: int,
    *,
    binning: int = 1,
    normalise: bool = True,
    edge: str = "pad",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut cubic boxes around particle centres.

    Args:
        volume: ZYX tomogram: a `Tomogram`, a (memory-mapped) numpy array or any array-like
            with ``shape``, ``ndim`` and slicing (e.g. an h5py or zarr dataset).
        centers_zyx: (N, 3) centres in voxels, ZYX; rounded to the nearest voxel.
        box_size: edge of the returned boxes in (binned) voxels.
        binning: integer average-pooling factor applied to each box.
        normalise: per-box zero mean, unit standard deviation.
        edge: "pad", "skip" or "error" for boxes that stick out of the tomogram (see the
            module docstring).

    Returns:
        ``(boxes, inside)``: float32 (N, B, B, B) and bool (N,), True where the whole box
        lies within the tomogram.

    Raises:
        InputError: bad arguments, a centre that is not finite, a box containing non-finite
            voxels (the message names the tomogram and the particle index), or with
            ``edge="error"`` a box that does not fit.
    """
    data, name = _volume_and_name(volume)
    centers = _check_centers(centers_zyx, name)
    box_size, binning = _check_box(box_size, binning, name)
    _check_edge(edge, name)
    n = len(centers)
    boxes = np.zeros((n, box_size, box_size, box_size), dtype=np.float32)
    inside = np.zeros(n, dtype=bool)
    voxels = _nearest_voxel(centers)
    pages = _MappedPages(data)
    for i in _z_order(voxels, data):
        inside[i] = _extract_one(
            data, voxels[i], box_size, binning, normalise, edge, boxes[i], name, int(i)
        )
        pages.touched((box_size * binning) ** 2)
    pages.release()
    return boxes, inside


def iter_subtomogram_batches(
    volume,
    centers_zyx,
    box_size: int,
    batch_size: int,
    *,
    order: str = "z",
    **kwargs,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream boxes in batches, for particle sets too large to hold in RAM at once.

    Args:
        volume, centers_zyx, box_size: as in `extract_subtomograms`.
        batch_size: boxes per batch (the last batch may be smaller).
        order: "z" (default) visits particles sorted by z, then y, x, so a tomogram on disk
            is read nearly sequentially (from a chunked store, by chunk first, so that
            neighbouring boxes share decoded chunks); "input" keeps the caller's order.
        **kwargs: ``binning``, ``normalise``, ``edge`` as in `extract_subtomograms`.

    Yields:
        ``(indices, boxes, inside)``: int64 (n,) positions in ``centers_zyx``, float32
        (n, B, B, B) and bool (n,). Error messages name the particle by its position in
        ``centers_zyx``.
    """
    unknown = set(kwargs) - {"binning", "normalise", "edge"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    data, name = _volume_and_name(volume)
    centers = _check_centers(centers_zyx, name)
    box_size, binning = _check_box(box_size, kwargs.get("binning", 1), name)
    normalise = kwargs.get("normalise", True)
    edge = kwargs.get("edge", "pad")
    _check_edge(edge, name)
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"{name}: batch_size must be a positive integer, got {batch_size}")
    if order not in ("z", "input"):
        raise InputError(f"{name}: order must be 'z' or 'input', got {order!r}")
    voxels = _nearest_voxel(centers)
    visit = _z_order(voxels, data) if order == "z" else np.arange(len(voxels))
    pages = _MappedPages(data)
    for start in range(0, len(visit), int(batch_size)):
        indices = visit[start : start + int(batch_size)].astype(np.int64)
        boxes = np.zeros((len(indices), box_size, box_size, box_size), dtype=np.float32)
        inside = np.zeros(len(indices), dtype=bool)
        # Within a batch, read in z order even when the batch itself is in input order.
        for j in _z_order(voxels[indices], data):
            i = int(indices[j])
            inside[j] = _extract_one(
                data, voxels[i], box_size, binning, normalise, edge, boxes[j], name, i
            )
            pages.touched((box_size * binning) ** 2)
        yield indices, boxes, inside
    pages.release()


def normalise_subtomograms(boxes) -> np.ndarray:
    """Zero mean, unit standard deviation per box (over the last three axes).

    A constant box becomes zeros (no division by 0). Statistics are accumulated in float64
    so large boxes with a big offset (e.g. unsigned 16-bit data) stay accurate.

    Args:
        boxes: (..., B, B, B) array.

    Returns:
        New float32 array of the same shape.

    Raises:
        InputError: fewer than 3 dimensions or non-finite values.
    """
    x = np.asarray(boxes)
    if x.ndim < 3:
        raise InputError(f"subtomograms: expected (..., B, B, B) boxes, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise InputError(f"subtomograms: non-finite value at index {tuple(int(b) for b in bad)}")
    axes = (-3, -2, -1)
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)
    flat = std <= np.finfo(np.float32).eps * np.abs(mean)
    return ((x - mean) / np.where(flat, 1.0, std) * ~flat).astype(np.float32)


# ----------------------------------------------------------------------------------------------


class _MappedPages:
    """Keeps a memory-mapped tomogram from filling this process's resident memory.

    Every page read through a memmap stays mapped into the process (and counts in its RSS)
    until unmapped, so reading boxes all over a 20 GB tomogram would make the process look
    20 GB large, although those pages are clean page cache the kernel may drop. Every
    `budget_bytes` of (estimated) mapped data this calls ``madvise(MADV_DONTNEED)`` on the
    mapping: the pages leave the process but stay in the page cache, so a re-read is cheap.
    numpy and mrcfile offer no such release, hence this small helper.

    Only read-only or shared mappings are released (a copy-on-write ``mode="c"`` memmap
    could hold private changes); anything else (RAM arrays, zarr...) is left alone.
    """

    #: Linux maps up to 64 KiB around each page fault (fault_around_bytes).
    FAULT_AROUND_BYTES = 65536

    def __init__(self, data, budget_bytes: int = 256 * 1024**2) -> None:
        self._mmap = _shared_mmap_of(data)
        self._budget = budget_bytes
        self._pending = 0

    def touched(self, n_rows: int) -> None:
        """Record that `n_rows` rows (contiguous runs along x) were read; release if due."""
        if self._mmap is None:
            return
        self._pending += n_rows * self.FAULT_AROUND_BYTES
        if self._pending >= self._budget:
            self.release()

    def release(self) -> None:
        if self._mmap is None:
            return
        self._pending = 0
        try:
            self._mmap.madvise(mmap.MADV_DONTNEED)
        except (AttributeError, OSError, ValueError):  # no madvise here, or a closed mapping
            self._mmap = None


def _is_chunked(data) -> bool:
    """Whether `data` is stored in compressed chunks (zarr, dask, chunked HDF5) rather than
    in RAM or a memory map: then one large read decodes each chunk once, where many small
    reads (plane by plane) would decode the same chunks again and again."""
    return not isinstance(data, np.ndarray) and getattr(data, "chunks", None) is not None


def _read(data, index: tuple, name: str, what: str):
    """``data[index]``; from a chunked store, an undecodable chunk is an `InputError`."""
    if not _is_chunked(data):
        return data[index]
    try:
        return np.asarray(data[index])
    except Exception as err:  # zarr/numcodecs raise many types for corrupt chunks
        raise InputError(
            f"{name}: cannot read {what}: a chunk of the tomogram is corrupt or unreadable "
            f"({type(err).__name__}: {err})"
        ) from err


def _shared_mmap_of(data) -> mmap.mmap | None:
    """The `mmap.mmap` behind a read-only/shared numpy memmap (following views), else None."""
    mode = None
    base = data
    for _ in range(16):
        if isinstance(base, np.memmap):
            mode = base.mode
        if isinstance(base, mmap.mmap):
            return base if mode in ("r", "r+", "w+") else None
        base = getattr(base, "base", None)
        if base is None:
            return None
    return None


def _extract_one(
    data,
    center: np.ndarray,
    box_size: int,
    binning: int,
    normalise: bool,
    edge: str,
    out: np.ndarray,
    name: str,
    index: int,
) -> bool:
    """Fill `out` (B, B, B) with the box around integer `center`; return whether it fits."""
    length = box_size * binning
    shape = np.array(data.shape[:3], dtype=np.int64)
    start = center - length // 2
    stop = start + length
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, shape)
    inside = bool(np.all(start >= 0) and np.all(stop <= shape))
    if not inside:
        if edge == "error":
            raise InputError(
                f"{name}: the {length}-voxel box of particle {index} (centre z,y,x = "
                f"{tuple(int(c) for c in center)}) does not fit in the tomogram of shape "
                f"{tuple(int(s) for s in shape)}"
            )
        if edge == "skip" or np.any(hi <= lo):
            out[...] = 0.0
            return False
    region = np.asarray(
        _read(
            data,
            (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])),
            name,
            f"the box of particle {index}",
        ),
        dtype=np.float32,
    )
    if not np.isfinite(region).all():
        raise InputError(
            f"{name}: non-finite voxels (NaN or Inf) in the box of particle {index} "
            f"(centre z,y,x = {tuple(int(c) for c in center)})"
        )
    if inside:
        box = region
    else:
        box = np.full((length,) * 3, region.mean(dtype=np.float64), dtype=np.float32)
        a = lo - start
        b = hi - start
        box[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = region
    if binning > 1:
        box = box.reshape(box_size, binning, box_size, binning, box_size, binning).mean(
            axis=(1, 3, 5), dtype=np.float64
        )
    if normalise:
        mean = box.mean(dtype=np.float64)
        std = box.std(dtype=np.float64)
        if std <= np.finfo(np.float32).eps * abs(mean):
            out[...] = 0.0
        else:
            out[...] = (box - mean) / std
    else:
        out[...] = box
    return inside


def _volume_and_name(volume) -> tuple[object, str]:
    """The ZYX array behind `volume` and a name for error messages (its file when known)."""
    if hasattr(volume, "data") and hasattr(volume, "path"):  # a napari_cryossl.io.Tomogram
        data, name = volume.data, str(volume.path)
    else:
        data = volume
        name = str(getattr(volume, "filename", None) or "tomogram")
        if not (hasattr(data, "shape") and hasattr(data, "ndim") and hasattr(data, "__getitem__")):
            data = np.asarray(data)
    if data.ndim != 3:
        raise InputError(f"{name}: expected a 3D (ZYX) volume, got shape {tuple(data.shape)}")
    dtype = np.dtype(getattr(data, "dtype", np.float32))
    if dtype.kind not in "uif":
        raise InputError(f"{name}: expected real-valued voxels, got dtype {dtype}")
    return data, name


def _check_centers(centers_zyx, name: str) -> np.ndarray:
    centers = np.asarray(centers_zyx, dtype=np.float64)
    if centers.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise InputError(f"{name}: particle centres must be (N, 3) ZYX, got shape {centers.shape}")
    bad = ~np.isfinite(centers).all(axis=1)
    if bad.any():
        raise InputError(
            f"{name}: particle {int(np.flatnonzero(bad)[0])} has no finite coordinates "
            f"({int(bad.sum())} such particles); standalone subtomograms cannot be extracted"
        )
    return centers


def _check_box(box_size, binning, name: str) -> tuple[int, int]:
    if int(box_size) != box_size or box_size < 1:
        raise InputError(f"{name}: box_size must be a positive integer, got {box_size}")
    if int(binning) != binning or binning < 1:
        raise InputError(f"{name}: binning must be a positive integer, got {binning}")
    return int(box_size), int(binning)


def _check_edge(edge: str, name: str) -> None:
    if edge not in _EDGE_MODES:
        raise InputError(f"{name}: edge must be one of {_EDGE_MODES}, got {edge!r}")


def _nearest_voxel(centers: np.ndarray) -> np.ndarray:
    return np.floor(centers + 0.5).astype(np.int64)


def _z_order(voxels: np.ndarray, data=None) -> np.ndarray:
    """Visiting order: by z, then y, x; from a chunked store first by the chunk holding the
    centre (then z, y, x), so that consecutive boxes share their chunks."""
    keys = [voxels[:, 2], voxels[:, 1], voxels[:, 0]]
    chunks = getattr(data, "chunks", None) if _is_chunked(data) else None
    if (
        isinstance(chunks, tuple)
        and len(chunks) == 3
        and all(isinstance(c, (int, np.integer)) and c > 0 for c in chunks)
    ):
        keys += [voxels[:, 2] // chunks[2], voxels[:, 1] // chunks[1], voxels[:, 0] // chunks[0]]
    return np.lexsort(keys)
