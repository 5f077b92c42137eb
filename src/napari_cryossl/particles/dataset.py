"""`SubtomogramSet`: one view over the ways subtomograms reach the classifier.

Training, prediction and Grad-CAM should not care where the boxes come from:

- **standalone subtomograms**: a STAR file whose ``rlnImageName`` rows point at one MRC per
  particle (RELION 3 subtomogram averaging, simulators); each file is read with
  `napari_cryossl.io.read_mrc` and kept in RAM up to a byte budget;
- **coordinates in tomograms**: a STAR/CSV of particle centres plus the tomogram(s); boxes
  are cut on demand from the memory-mapped tomogram (`napari_cryossl.particles.extract`), so a set
  of 100 000 particles in a 20 GB tomogram costs no RAM until a batch is loaded. The
  tomograms are given, found by name next to the STAR file, or listed by a RELION
  ``tomograms.star`` (whose pixel sizes, binnings and sizes map RELION-5 centred Å and
  RELION-4 unbinned pixels onto each, possibly binned, tomogram; the finding, reading and
  checking are in `napari_cryossl.particles.particle_sources`);
- **arrays in memory**: simulated data and tests (`SubtomogramSet.from_arrays`).

Whatever the source, `SubtomogramSet.load` returns float32 (n, B, B, B) boxes, each with
zero mean and unit standard deviation (the normalisation the models are trained with).

The set is a map-style dataset for ``torch.utils.data.DataLoader``: ``set[i]`` is
``(box (1, B, B, B) float32, class_number)`` and ``__getitems__`` loads a whole batch at
once. It pickles without its tomograms' voxels or its cache (a memory-mapped tomogram is
reopened lazily from its path in each worker), so DataLoader workers start fast with any
multiprocessing start method. torch is not imported here.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io import (
    InputError,
    InputWarning,
    RelionTomogram,
    Tomogram,
    make_particle_table,
    open_tomogram,
    particle_zyx,
    read_mrc,
    read_tomograms_star,
)
from napari_cryossl.particles.extract import extract_subtomograms, normalise_subtomograms
from napari_cryossl.particles.particle_sources import (
    _as_tomogram,
    _check_box,
    _check_class_numbers,
    _check_voxel_size,
    _find_tomogram,
    _fmt_shape,
    _picklable_tomogram,
    _read_table,
    _reconcile,
    _records_of,
    _subtomogram_geometry,
    _tomograms_from_records,
)

__all__ = ["DEFAULT_BOX_SIZE", "DEFAULT_CACHE_BYTES", "SubtomogramSet"]

#: Box edge (voxels) used when extracting from a tomogram and none is given.
DEFAULT_BOX_SIZE = 32
#: RAM budget for caching standalone subtomograms read from disk (per process).
DEFAULT_CACHE_BYTES = 2 * 1024**3


class _ArrayCache:
    """Fill-until-full cache of raw (binned, not normalised) boxes, keyed by file path.

    No eviction: with shuffled epochs every box is equally likely next, so keeping the first
    ones that fit is as good as LRU and never churns. Shared by a set and its subsets; not
    pickled (each DataLoader worker fills its own).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self._items: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        return self._items.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items or self.used_bytes + value.nbytes > self.budget_bytes:
                return
            self._items[key] = value
            self.used_bytes += value.nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:
        return {"budget_bytes": self.budget_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["budget_bytes"])


class SubtomogramSet:
    """Particles plus the means to load their boxes, normalised, as float32 (n, B, B, B).

    Build one with `from_star`, `from_table` or `from_arrays`; do not call the constructor.

    Attributes:
        table: the particle table (`napari_cryossl.io.PARTICLE_COLUMNS`), index 0..n-1.
        box_size: box edge in (binned) voxels.
        voxel_size: Å per (binned) voxel.
        binning: average-pooling factor applied to every box.
        source_path: the STAR file the set was read from, or None.
        kind: "arrays", "files" (standalone subtomogram MRCs) or "tomogram" (coordinates).
        relion_tomograms: for coordinate sets, each tomogram as RELION records it
            (``rlnTomoName`` -> `napari_cryossl.io.RelionTomogram`): from the
            ``tomograms.star`` when one was given, else from the tomogram itself (binning
            1). What RELION-5 output (`napari_cryossl.io.write_particles` with
            ``relion5=True``, `napari_cryossl.io.write_tomograms_star`) needs.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        *,
        kind: str,
        box_size: int,
        voxel_size: float,
        binning: int = 1,
        source_path: Path | None = None,
        volumes: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        tomograms: dict[str, Tomogram | Path] | None = None,
        cache: _ArrayCache | None = None,
        relion_tomograms: dict[str, RelionTomogram] | None = None,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.kind = kind
        self.box_size = int(box_size)
        self.voxel_size = float(voxel_size)
        self.binning = int(binning)
        self.source_path = None if source_path is None else Path(source_path)
        self._volumes = volumes
        # Per particle: its row in `volumes` ("arrays") or its tomogram's index ("tomogram").
        self._rows = rows
        self._tomograms: dict[str, Tomogram | Path] = dict(tomograms or {})
        self._tomogram_keys: list[str] = list(self._tomograms)
        self._cache = cache if cache is not None else _ArrayCache(DEFAULT_CACHE_BYTES)
        self.relion_tomograms: dict[str, RelionTomogram] = dict(relion_tomograms or {})

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, volumes, class_numbers=None, voxel_size: float = 1.0) -> SubtomogramSet:
        """Subtomograms already in memory (simulations, tests).

        Args:
            volumes: (N, B, B, B) cubic boxes; copied to float32.
            class_numbers: (N,) 1-based classes, 0 = unlabelled; default all 0.
            voxel_size: Å per voxel.
        """
        name = "subtomogram array"
        arr = np.ascontiguousarray(volumes, dtype=np.float32)
        if arr.ndim != 4 or not (arr.shape[1] == arr.shape[2] == arr.shape[3]) or arr.shape[1] < 1:
            raise InputError(f"{name}: expected cubic boxes (N, B, B, B), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))[0])
            raise InputError(f"{name}: subtomogram {bad} contains NaN or Inf")
        n = len(arr)
        labels = _check_class_numbers(class_numbers, n, name)
        voxel_size = _check_voxel_size(voxel_size, name)
        table = make_particle_table(np.full((n, 3), np.nan), class_number=labels, source="imported")
        return cls(
            table,
            kind="arrays",
            box_size=arr.shape[1],
            voxel_size=voxel_size,
            volumes=arr,
            rows=np.arange(n, dtype=np.int64),
        )

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        tomogram,
        box_size: int = DEFAULT_BOX_SIZE,
        *,
        binning: int = 1,
    ) -> SubtomogramSet:
        """Particles given by coordinates in one tomogram (picks, annotations).

        Args:
            table: particle table; x, y, z in voxels of `tomogram` (must be finite).
            tomogram: a `Tomogram` or the path of a tomogram MRC.
            box_size: box edge in binned voxels.
            binning: average-pooling factor (the boxes' voxel size is binning · voxel size).
        """
        tomo = _as_tomogram(tomogram)
        box_size, binning = _check_box(box_size, binning, str(tomo.path))
        zyx = particle_zyx(table)
        bad = ~np.isfinite(zyx).all(axis=1)
        if bad.any():
            raise InputError(
                f"{tomo.path}: particle {int(np.flatnonzero(bad)[0])} of the table has no "
                "coordinates; cannot extract it from the tomogram"
            )
        table = table.copy()
        if "class_number" not in table.columns:
            table["class_number"] = np.zeros(len(table), dtype=np.int64)
        return cls(
            table,
            kind="tomogram",
            box_size=box_size,
            voxel_size=tomo.voxel_size * binning,
            binning=binning,
            tomograms={str(tomo.path): tomo},
            rows=np.zeros(len(table), dtype=np.int64),  # every row -> tomogram 0
            relion_tomograms=_records_of(table, tomo),
        )

    @classmethod
    def from_tables(
        cls,
        tables,
        box_size: int = DEFAULT_BOX_SIZE,
        *,
        binning: int = 1,
    ) -> SubtomogramSet:
        """Particles of several tomograms in one set: rows in order, each box from its own.

        Args:
            tables: ``(table, tomogram)`` pairs; each table's x, y, z are voxels of its
                `tomogram` (a `Tomogram` or a path). Empty tables are skipped.
            box_size: box edge in binned voxels.
            binning: average-pooling factor.

        Raises:
            InputError: no pair given, a particle without coordinates, or tomograms of
                different voxel sizes.
        """
        pairs = [(table, _as_tomogram(tomo)) for table, tomo in tables]
        if not pairs:
            raise InputError("no tomogram given: nothing to build a subtomogram set from")
        parts = []
        tomos: dict[str, Tomogram] = {}
        relion: dict[str, RelionTomogram] = {}
        rows = []
        for table, tomo in pairs:
            part = cls.from_table(table, tomo, box_size, binning=binning)
            key = str(tomo.path)
            if key not in tomos:
                tomos[key] = tomo
                relion.update(part.relion_tomograms)
            parts.append(part.table)
            rows.append(np.full(len(part), list(tomos).index(key), dtype=np.int64))
        sizes = {t.voxel_size for t in tomos.values()}
        if len(sizes) > 1:
            raise InputError(
                f"the tomograms have different voxel sizes ({sorted(sizes)} Å); "
                "classify them in separate sets"
            )
        box_size, binning = _check_box(box_size, binning, str(pairs[0][1].path))
        return cls(
            pd.concat(parts, ignore_index=True),
            kind="tomogram",
            box_size=box_size,
            voxel_size=sizes.pop() * binning,
            binning=binning,
            tomograms=tomos,
            rows=np.concatenate(rows),
            relion_tomograms=relion,
        )

    @classmethod
    def from_star(
        cls,
        path,
        *,
        box_size: int | None = None,
        tomogram=None,
        binning: int = 1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        tomograms=None,
    ) -> SubtomogramSet:
        """A STAR (or CSV) file of standalone subtomograms or of coordinates in tomograms.

        Subtomograms (every row has ``rlnImageName``): ``box_size`` is inferred from the
        files, which must all be cubic and of one size; if given it must equal the (binned)
        file size. Coordinates (no image names): each particle's tomogram is `tomogram`
        when given (then the STAR may name at most one tomogram), else the one `tomograms`
        (a RELION ``tomograms.star``) names for its ``rlnTomoName``
        (``rlnTomoReconstructedTomogram``), else found from ``rlnTomoName`` /
        ``rlnMicrographName`` next to the STAR file (trying the name, then with .mrc, .rec,
        .map, .zarr appended); ``box_size`` defaults to `DEFAULT_BOX_SIZE`. Coordinates become
        voxels of each tomogram: RELION-5 centred Å with its size and voxel size (RELION's
        centre and pixel size from `tomograms`), RELION-4 pixels rescaled from the
        tilt-series pixel size the file (or `tomograms`) records to its voxel size.

        Args:
            path: STAR or CSV particle file.
            box_size: box edge in binned voxels (see above).
            tomogram: `Tomogram` or tomogram path, for coordinate files.
            binning: average-pooling factor for every box.
            cache_bytes: RAM budget for caching standalone subtomograms (per process).
            tomograms: a RELION tomogram set: a ``tomograms.star`` path or
                `napari_cryossl.io.read_tomograms_star`'s mapping (not with `tomogram`).

        Raises:
            InputError: empty file, mixed image/coordinate rows, missing or inconsistent
                files, a tomogram that cannot be found, a box size that does not match, a
                tomogram whose shape disagrees with its tomograms.star record.
        """
        path = Path(path)
        tomo = None
        if tomogram is not None and tomograms is not None:
            raise InputError(
                f"{path}: give either a tomogram or a tomograms.star (RELION tomogram set), "
                "not both"
            )
        if tomogram is not None:
            tomo = _as_tomogram(tomogram)
        records = None
        if tomograms is not None:
            records = (
                dict(tomograms)
                if isinstance(tomograms, Mapping)
                else read_tomograms_star(tomograms)
            )
        table = _read_table(path, tomo)
        if len(table) == 0:
            raise InputError(f"{path}: the particle file lists no particles")
        if int(binning) != binning or binning < 1:
            raise InputError(f"{path}: binning must be a positive integer, got {binning}")
        binning = int(binning)
        has_image = table["image_name"].fillna("").astype(str) != ""
        if has_image.all():
            return cls._from_files(path, table, box_size, binning, cache_bytes)
        if has_image.any():
            raise InputError(
                f"{path}: {int(has_image.sum())} of {len(table)} rows name a subtomogram "
                "(rlnImageName) and the others do not; split them into two files"
            )
        return cls._from_coordinates(path, table, box_size, tomo, binning, cache_bytes, records)

    @classmethod
    def _from_files(cls, path, table, box_size, binning, cache_bytes) -> SubtomogramSet:
        names = table["image_name"].astype(str).tolist()
        file_box, voxel = None, None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            for row, name in enumerate(names):
                shape, vs = _subtomogram_geometry(Path(name), path, row)
                if file_box is None:
                    file_box, voxel, first = shape, vs, name
                elif shape != file_box:
                    raise InputError(
                        f"{path}: subtomograms differ in size: {name} (row {row + 1}) is "
                        f"{_fmt_shape(shape)}, {first} is {_fmt_shape(file_box)}"
                    )
        notes = [w for w in caught if issubclass(w.category, InputWarning)]
        if notes:  # one warning for the set, not one per file
            more = f" (and {len(notes) - 1} more files)" if len(notes) > 1 else ""
            warnings.warn(f"{notes[0].message}{more}", InputWarning, stacklevel=3)
        if len(set(file_box)) != 1:
            raise InputError(f"{path}: subtomogram {first} is not cubic: {_fmt_shape(file_box)}")
        edge = file_box[0]
        if edge % binning:
            raise InputError(
                f"{path}: subtomogram box {edge} is not divisible by binning {binning}"
            )
        if box_size is not None and box_size != edge // binning:
            raise InputError(
                f"{path}: box_size {box_size} requested but the subtomograms are "
                f"{edge // binning} voxels (after binning {binning}); omit box_size or "
                "re-extract them at that size"
            )
        return cls(
            table,
            kind="files",
            box_size=edge // binning,
            voxel_size=voxel * binning,
            binning=binning,
            source_path=path,
            cache=_ArrayCache(cache_bytes),
        )

    @classmethod
    def _from_coordinates(cls, path, table, box_size, tomo, binning, cache_bytes, records=None):
        if box_size is None:
            box_size = DEFAULT_BOX_SIZE
        box_size, binning = _check_box(box_size, binning, str(path))
        names = table["tomo_name"].fillna("").astype(str)
        distinct = sorted(set(names) - {""})
        if tomo is not None:
            if len(distinct) > 1:
                raise InputError(
                    f"{path}: the file lists {len(distinct)} tomograms ({', '.join(distinct[:5])}"
                    f"{', ...' if len(distinct) > 5 else ''}) but one tomogram was given; "
                    "omit it to find each tomogram next to the STAR file"
                )
            tomos = {str(tomo.path): tomo}
            rows = np.zeros(len(table), dtype=np.int64)
            relion = _records_of(table, tomo)
        else:
            if (names == "").any():
                raise InputError(
                    f"{path}: {int((names == '').sum())} particles have coordinates but no "
                    "tomogram name (rlnTomoName / rlnMicrographName); pass the tomogram "
                    "(--tomogram)"
                )
            if records is not None:
                found, relion = _tomograms_from_records(distinct, records, path)
            else:
                found = {name: _find_tomogram(name, path) for name in distinct}
                relion = None
            tomos = {str(p): open_tomogram(p) for p in found.values()}
            if relion is not None:  # RELION's voxel size, its record checked against the file
                for name, p in found.items():
                    tomo_i, relion[name] = _reconcile(tomos[str(p)], relion[name], path)
                    tomos[str(p)] = tomo_i
            else:
                relion = {
                    name: RelionTomogram.from_tomogram(tomos[str(p)], name=name)
                    for name, p in found.items()
                }
            keys = list(tomos)
            rows = names.map({n: keys.index(str(p)) for n, p in found.items()})
            rows = rows.to_numpy(dtype=np.int64)
            # Read again, now that every tomogram is known: RELION-5 Å and RELION-4 pixels
            # become each tomogram's voxels in io, which also checks the bounds.
            table = _read_table(
                path,
                None,
                shapes={n: tomos[str(p)].shape for n, p in found.items()},
                voxel_sizes={n: tomos[str(p)].voxel_size for n, p in found.items()},
                records=relion if records is not None else None,
            )
        sizes = {t.voxel_size for t in tomos.values()}
        if len(sizes) > 1:
            raise InputError(
                f"{path}: the tomograms have different voxel sizes ({sorted(sizes)} Å); "
                "classify them in separate sets"
            )
        zyx = particle_zyx(table)
        bad = ~np.isfinite(zyx).all(axis=1)
        if bad.any():
            raise InputError(
                f"{path}: particle {int(np.flatnonzero(bad)[0])} has no usable coordinates"
            )
        return cls(
            table,
            kind="tomogram",
            box_size=box_size,
            voxel_size=sizes.pop() * binning,
            binning=binning,
            source_path=path,
            tomograms=tomos,
            rows=rows,
            cache=_ArrayCache(cache_bytes),
            relion_tomograms=relion,
        )

    # -- the view ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        src = self.source_path or self.kind
        return (
            f"SubtomogramSet({len(self)} particles, box {self.box_size}, "
            f"{self.voxel_size:g} Å/voxel, from {src})"
        )

    @property
    def class_numbers(self) -> np.ndarray:
        """int64 (N,) 1-based classes, 0 = unlabelled."""
        return self.table["class_number"].to_numpy(dtype=np.int64)

    @property
    def tomogram(self) -> Tomogram | None:
        """The tomogram the particles come from, when there is exactly one (else None)."""
        if self.kind != "tomogram" or len(self._tomogram_keys) != 1:
            return None
        return self._open(0)

    @property
    def tomogram_paths(self) -> list[Path]:
        """Paths of every tomogram the set extracts from (empty for subtomogram files)."""
        if self.kind != "tomogram":
            return []
        return [Path(k) for k in self._tomogram_keys]

    def per_tomogram(self) -> list[tuple[Tomogram, pd.DataFrame]]:
        """``(tomogram, its particles)`` pairs, in the order the tomograms were given:
        what works on whole tomograms (the learned picker) rather than on boxes."""
        if self.kind != "tomogram":
            raise InputError(
                f"{self.source_path or 'particles'}: standalone subtomograms, not coordinates "
                "in tomograms"
            )
        return [
            (self._open(t), self.table[self._rows == t].reset_index(drop=True))
            for t in range(len(self._tomogram_keys))
            if (self._rows == t).any()
        ]

    def centers_zyx(self) -> np.ndarray:
        """(N, 3) float64 ZYX voxel centres; NaN for standalone subtomograms."""
        return particle_zyx(self.table)

    def load(self, indices) -> np.ndarray:
        """Boxes of the given particles, float32 (n, B, B, B), each zero mean / unit std.

        Args:
            indices: particle positions (ints, 0..len-1), any 1D sequence; a slice works too.
        """
        idx = self._indices(indices)
        b = self.box_size
        if len(idx) == 0:
            return np.zeros((0, b, b, b), dtype=np.float32)
        if self.kind == "arrays":
            return normalise_subtomograms(self._volumes[self._rows[idx]])
        if self.kind == "files":
            out = np.empty((len(idx), b, b, b), dtype=np.float32)
            for j, i in enumerate(idx):
                out[j] = self._read_file(int(i))
            return normalise_subtomograms(out)
        out = np.empty((len(idx), b, b, b), dtype=np.float32)
        centers = self.centers_zyx()[idx]
        which = self._rows[idx]
        for t in np.unique(which):
            sel = np.flatnonzero(which == t)
            out[sel], _ = extract_subtomograms(
                self._open(int(t)), centers[sel], b, binning=self.binning, edge="pad"
            )
        return out

    def inside(self) -> np.ndarray:
        """bool (N,): whether each particle's box lies wholly inside its tomogram.

        Always True for subtomogram files and arrays. Boxes that stick out are padded (see
        `napari_cryossl.particles.extract`); callers may want to report or drop them.
        """
        if self.kind != "tomogram":
            return np.ones(len(self), dtype=bool)
        out = np.ones(len(self), dtype=bool)
        half = self.box_size * self.binning // 2
        length = self.box_size * self.binning
        voxels = np.floor(self.centers_zyx() + 0.5).astype(np.int64)
        for t in np.unique(self._rows):
            sel = self._rows == t
            shape = np.array(self._open(int(t)).data.shape)
            start = voxels[sel] - half
            out[sel] = np.all((start >= 0) & (start + length <= shape), axis=1)
        return out

    def subset(self, indices) -> SubtomogramSet:
        """A set of the given particles (sharing files, arrays, tomograms and cache)."""
        idx = self._indices(indices)
        out = copy.copy(self)
        out.table = self.table.iloc[idx].reset_index(drop=True)
        if self._rows is not None:
            out._rows = self._rows[idx]
        out._tomograms = self._tomograms  # shared: a tomogram opened once serves all
        return out

    def with_class_numbers(self, class_numbers) -> SubtomogramSet:
        """A copy with new class numbers (e.g. labels from an annotation store)."""
        out = self.subset(np.arange(len(self)))
        out.table["class_number"] = _check_class_numbers(class_numbers, len(self), repr(self))
        return out

    # -- torch map-style dataset protocol (no torch import needed) ---------------------------

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """``(box (1, B, B, B) float32, class_number)`` for DataLoader use."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"SubtomogramSet index must be an int, got {type(index).__name__}")
        i = int(self._indices([index])[0])
        return self.load([i]), int(self.table.at[i, "class_number"])

    def __getitems__(self, indices) -> list[tuple[np.ndarray, int]]:
        """A whole batch in one `load` call (``DataLoader`` uses it when present)."""
        idx = self._indices(indices)
        boxes = self.load(idx)
        labels = self.class_numbers[idx]
        return [(boxes[j : j + 1], int(labels[j])) for j in range(len(idx))]

    # -- pickling: paths, not voxels ------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tomograms"] = {key: _picklable_tomogram(t) for key, t in self._tomograms.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- internals ------------------------------------------------------------------------------

    def _indices(self, indices) -> np.ndarray:
        n = len(self)
        if isinstance(indices, slice):
            return np.arange(n)[indices]
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {idx.shape} for {n} particles")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64, casting="same_kind").reshape(-1)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"particle index out of range for a set of {n}")
        return np.where(idx < 0, idx + n, idx)

    def _open(self, t: int) -> Tomogram:
        key = self._tomogram_keys[t]
        tomo = self._tomograms.get(key)
        if tomo is None or isinstance(tomo, Path):
            tomo = open_tomogram(Path(key) if tomo is None else tomo)
            self._tomograms[key] = tomo
        return tomo

    def _read_file(self, i: int) -> np.ndarray:
        name = str(self.table.at[i, "image_name"])
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        data, _ = read_mrc(name)
        edge = self.box_size * self.binning
        if data.shape != (edge, edge, edge):
            raise InputError(
                f"{name}: subtomogram is {_fmt_shape(data.shape)}, expected {edge}^3 like the "
                f"others in {self.source_path}"
            )
        if self.binning > 1:
            b, k = self.box_size, self.binning
            data = data.reshape(b, k, b, k, b, k).mean(axis=(1, 3, 5), dtype=np.float64)
        data = np.ascontiguousarray(data, dtype=np.float32)
        self._cache.put(name, data)
        return data
