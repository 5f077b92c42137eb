"""The annotation store: one tomogram's particles, labels and classes, saved on every change.

`AnnotationStore` is the single source of truth the GUI edits (the Points layers are views
of it) and the CLI can read. It is Qt-free: the GUI subscribes through `on_change`.

Persistence: one STAR file, ``<tomogram stem>.cryossl.star`` beside the tomogram (or in a
chosen project folder), written and read by `napari_cryossl.particles.annotation_file`, with two data
blocks that starfile (and RELION, which ignores the ``cryossl*`` labels) can read:

- ``data_classes``: ``rlnClassNumber``, ``cryosslClassName``, ``cryosslClassColor``
  (``#rrggbb``);
- ``data_particles``: ``rlnCoordinateX/Y/Z`` (pixels, as RELION 3/4), ``rlnClassNumber``
  (0 = unlabelled), ``rlnAutopickFigureOfMerit`` (score), ``rlnMaxValueProbDistribution``
  (probability of the prediction), ``cryosslPredictedClass`` (0 = none), ``cryosslSource``,
  ``rlnTomoName``, ``rlnImageName``.

Every mutation computes the new state, writes it with `napari_cryossl.io.atomic_write`
(temp file, fsync, rename) and only then replaces the in-memory state and notifies
listeners. So a ``kill -9`` at any moment loses at most the edit in progress, and a failed
save (full disk) leaves both the file and the object as they were. A store file that
cannot be read raises `InputError` and is never overwritten.

Class numbers are stable (1-based, like ``rlnClassNumber``): deleting a class unlabels its
particles and does not renumber the others.

One store object per file: two objects (or processes) editing the same file would
overwrite each other's edits.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_cryossl.io import (
    PARTICLE_COLUMNS,
    TOMOGRAM_SUFFIXES,
    InputError,
    InputWarning,
    make_particle_table,
    remove_stale_temp_files,
)
from napari_cryossl.particles.annotation_file import _check_store_text, _hex_color, _load, _save
from napari_cryossl.particles.colors import DEFAULT_PALETTE

__all__ = [
    "DEFAULT_PALETTE",
    "JUNK_CLASS_NAME",
    "STORE_COLUMNS",
    "STORE_SUFFIX",
    "AnnotationChange",
    "AnnotationStore",
    "store_path_for",
]

#: Suffix of store files: ``<tomogram stem>.cryossl.star``.
STORE_SUFFIX = ".cryossl.star"
#: Columns of `AnnotationStore.table`: the particle table plus the predicted class.
STORE_COLUMNS = [*PARTICLE_COLUMNS, "predicted_class"]

#: The name of the class for picks that are not particles (gold, ice, carbon, noise).
#: Name a class this way and prediction, the learned picker, the demo and Grad-CAM treat
#: it as junk; the demo gives it the last class number (one more than the particle classes).
JUNK_CLASS_NAME = "not a particle"


@dataclass(frozen=True)
class AnnotationChange:
    """What changed, passed to every `AnnotationStore.on_change` callback.

    Attributes:
        kind: "particles" (added, removed or moved: indices may have shifted), "labels"
            (class labels of existing particles), "classes" (class list), "predictions".
        indices: rows concerned, when meaningful (added, moved or relabelled particles).
    """

    kind: str
    indices: np.ndarray | None = None


def store_path_for(tomogram_path: str | os.PathLike, project_dir=None) -> Path:
    """Where the store of a tomogram lives: ``<folder>/<stem>.cryossl.star``.

    The folder is `project_dir` when given, else the tomogram's folder. The stem drops one
    tomogram suffix (.mrc, .rec, .map).
    """
    tomogram_path = Path(tomogram_path)
    name = tomogram_path.name
    stem = tomogram_path.stem if tomogram_path.suffix.lower() in TOMOGRAM_SUFFIXES else name
    folder = Path(project_dir) if project_dir is not None else tomogram_path.parent
    return folder / f"{stem}{STORE_SUFFIX}"


class AnnotationStore:
    """Particles, labels and classes of one tomogram, saved atomically on every change.

    Attributes:
        path: the store file.
        tomo_name: tomogram name recorded for particles added without one.
        on_change: callables called as ``callback(change: AnnotationChange)`` after every
            saved change (in the thread that made it). Append to subscribe.

    Mutations are serialised by a lock; they are meant to be called from one (GUI) thread.
    """

    def __init__(self, path: str | os.PathLike, *, tomo_name: str = "") -> None:
        """Open the store at `path`, loading it if the file exists.

        Raises:
            InputError: the file exists but is not a readable store (it is left untouched),
                or its folder does not exist or cannot be written.
        """
        self.path = Path(path)
        self.tomo_name = _check_store_text(str(tomo_name), "tomogram name", self.path)
        self.on_change: list[Callable[[AnnotationChange], Any]] = []
        self._lock = threading.RLock()
        folder = self.path.parent
        if not folder.is_dir():
            raise InputError(f"{self.path}: folder {folder} does not exist")
        if self.path.exists():
            self._table, self._classes = _load(self.path)
        else:
            self._table = _empty_table()
            self._classes = []
        if not os.access(folder, os.W_OK):
            raise InputError(
                f"{self.path}: cannot save annotations in {folder} (not writable); "
                "choose a project folder"
            )
        remove_stale_temp_files(self.path)

    @classmethod
    def for_tomogram(
        cls, tomogram_path: str | os.PathLike, project_dir: str | os.PathLike | None = None
    ) -> AnnotationStore:
        """The store of a tomogram: ``<stem>.cryossl.star`` beside it or in `project_dir`.

        Loads the store if it exists, else starts an empty one (written on the first edit).
        When no `project_dir` is given and the tomogram's folder is read-only (shared data),
        the store goes to a per-user folder (``$XDG_DATA_HOME/napari-cryossl/annotations``
        or ``~/.local/share/...``) and a warning says where.

        Raises:
            InputError: the store file exists but cannot be read.
        """
        tomogram_path = Path(tomogram_path)
        if project_dir is not None:
            Path(project_dir).mkdir(parents=True, exist_ok=True)
            path = store_path_for(tomogram_path, project_dir)
        else:
            path = store_path_for(tomogram_path)
            if not path.exists() and not os.access(path.parent, os.W_OK):
                path = _user_store_path(tomogram_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                warnings.warn(
                    f"{tomogram_path.parent} is not writable; annotations of "
                    f"{tomogram_path.name} are saved in {path}",
                    InputWarning,
                    stacklevel=2,
                )
        return cls(path, tomo_name=tomogram_path.name)

    # ------------------------------------------------------------------------- reading

    @property
    def table(self) -> pd.DataFrame:
        """A copy of the particle table (`STORE_COLUMNS`), rows in store order."""
        with self._lock:
            return self._table.copy()

    @property
    def classes(self) -> list[dict]:
        """A copy of the class list: dicts with ``number``, ``name``, ``color`` (#rrggbb)."""
        with self._lock:
            return [dict(c) for c in self._classes]

    def __len__(self) -> int:
        return len(self._table)

    def class_numbers(self) -> list[int]:
        """Numbers of the defined classes, ascending."""
        with self._lock:
            return sorted(int(c["number"]) for c in self._classes)

    # ----------------------------------------------------------------------- particles

    def add_particles(
        self,
        zyx,
        *,
        source: str = "manual",
        class_number=0,
        score=None,
        tomo_name: str | None = None,
    ) -> np.ndarray:
        """Append particles; returns their row indices.

        Args:
            zyx: (N, 3) centres in tomogram voxels, ZYX.
            source: one of `napari_cryossl.io.PARTICLE_SOURCES`.
            class_number: 0 (unlabelled) or a defined class, for all or per particle.
            score: picking score per particle (or one for all); NaN if none.
            tomo_name: tomogram name (default: the store's `tomo_name`).

        Raises:
            InputError: bad coordinates (not (N, 3) or not finite), unknown class or source.
        """
        zyx = self._check_zyx(zyx)
        if len(zyx) == 0:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            new = make_particle_table(
                zyx,
                class_number=class_number,
                source=source,
                score=score,
                tomo_name=self.tomo_name if tomo_name is None else tomo_name,
            )
            self._check_classes(new["class_number"].to_numpy())
            new["predicted_class"] = np.zeros(len(new), dtype=np.int64)
            start = len(self._table)
            table = pd.concat([self._table, new], ignore_index=True) if start else new
            self._commit(_typed(table), self._classes)
            indices = np.arange(start, start + len(new), dtype=np.int64)
        self._notify(AnnotationChange("particles", indices))
        return indices

    def remove_particles(self, indices) -> None:
        """Delete particles by row index; later rows move up (indices shift)."""
        with self._lock:
            idx = self._check_indices(indices)
            if idx.size == 0:
                return
            table = self._table.drop(index=idx).reset_index(drop=True)
            self._commit(table, self._classes)
        self._notify(AnnotationChange("particles", idx))

    def move_particles(self, indices, zyx) -> None:
        """Set new centres (ZYX voxels) for the given rows."""
        zyx = self._check_zyx(zyx)
        with self._lock:
            idx = self._check_indices(indices, unique=True)
            if len(idx) != len(zyx):
                raise InputError(f"{self.path}: {len(zyx)} positions for {len(idx)} particles")
            if idx.size == 0:
                return
            table = self._table.copy()
            for col, axis in (("z", 0), ("y", 1), ("x", 2)):
                table.loc[idx, col] = zyx[:, axis]
            self._commit(table, self._classes)
        self._notify(AnnotationChange("particles", idx))

    def set_class(self, indices, class_number: int) -> None:
        """Label particles with a defined class, or unlabel them with 0."""
        with self._lock:
            idx = self._check_indices(indices)
            number = self._check_classes([class_number])[0]
            if idx.size == 0:
                return
            table = self._table.copy()
            table.loc[idx, "class_number"] = number
            self._commit(table, self._classes)
        self._notify(AnnotationChange("labels", idx))

    def set_predictions(self, predicted_class, probability) -> None:
        """Store a classifier's prediction for every particle (0 / NaN = no prediction).

        Args:
            predicted_class: (N,) class numbers (defined classes or 0), one per particle.
            probability: (N,) probability of that class, in [0, 1] or NaN.
        """
        with self._lock:
            n = len(self._table)
            predicted = np.asarray(predicted_class).reshape(-1)
            prob = np.asarray(probability, dtype=np.float64).reshape(-1)
            if len(predicted) != n or len(prob) != n:
                raise InputError(
                    f"{self.path}: predictions for {len(predicted)} / {len(prob)} particles, "
                    f"but the store has {n}"
                )
            predicted = self._check_classes(predicted)
            if ((prob < 0) | (prob > 1)).any():
                raise InputError(f"{self.path}: probabilities must lie in [0, 1]")
            table = self._table.copy()
            table["predicted_class"] = predicted
            table["probability"] = prob
            self._commit(table, self._classes)
        self._notify(AnnotationChange("predictions"))

    def clear_predictions(self) -> None:
        """Forget all predictions."""
        n = len(self._table)
        self.set_predictions(np.zeros(n, dtype=np.int64), np.full(n, np.nan))

    # ------------------------------------------------------------------------- classes

    def add_class(self, name: str | None = None, color=None) -> int:
        """Define a class; returns its number (one more than the largest defined).

        Args:
            name: unique name (default ``"class N"``).
            color: ``#rrggbb``, an RGB(A) sequence (0-1 floats or 0-255 ints) or a named
                colour; default: the first palette colour not in use.
        """
        with self._lock:
            number = max(self.class_numbers(), default=0) + 1
            name = f"class {number}" if name is None or not str(name).strip() else name
            name = self._check_name(name)
            if color is None:
                used = {c["color"] for c in self._classes}
                free = [c for c in DEFAULT_PALETTE if c not in used]
                color = free[0] if free else DEFAULT_PALETTE[(number - 1) % len(DEFAULT_PALETTE)]
            classes = [
                *self._classes,
                {"number": number, "name": name, "color": _hex_color(color, self.path)},
            ]
            self._commit(self._table, classes)
        self._notify(AnnotationChange("classes"))
        return number

    def rename_class(self, number: int, name: str) -> None:
        """Rename a class (names are unique)."""
        with self._lock:
            i = self._class_index(number)
            name = self._check_name(name, exclude=number)
            classes = [dict(c) for c in self._classes]
            classes[i]["name"] = name
            self._commit(self._table, classes)
        self._notify(AnnotationChange("classes"))

    def set_class_color(self, number: int, color) -> None:
        """Change a class's display colour."""
        with self._lock:
            i = self._class_index(number)
            classes = [dict(c) for c in self._classes]
            classes[i]["color"] = _hex_color(color, self.path)
            self._commit(self._table, classes)
        self._notify(AnnotationChange("classes"))

    def delete_class(self, number: int) -> None:
        """Remove a class: its particles become unlabelled, its predictions are cleared."""
        with self._lock:
            i = self._class_index(number)
            classes = [dict(c) for j, c in enumerate(self._classes) if j != i]
            table = self._table.copy()
            table.loc[table["class_number"] == number, "class_number"] = 0
            predicted = table["predicted_class"] == number
            table.loc[predicted, "predicted_class"] = 0
            table.loc[predicted, "probability"] = np.nan
            self._commit(table, classes)
        self._notify(AnnotationChange("classes"))

    # ------------------------------------------------------------------------ internals

    def _commit(self, table: pd.DataFrame, classes: list[dict]) -> None:
        """Save the new state; adopt it only once it is safely on disk."""
        _save(self.path, table, classes)
        self._table = table
        self._classes = classes

    def _notify(self, change: AnnotationChange) -> None:
        """Call every listener; the first exception (if any) is re-raised after all ran."""
        error = None
        for callback in list(self.on_change):
            try:
                callback(change)
            except Exception as exc:  # noqa: BLE001 - one bad listener must not starve others
                error = error or exc
        if error is not None:
            raise error

    def _check_zyx(self, zyx) -> np.ndarray:
        arr = np.asarray(zyx, dtype=np.float64)
        if arr.size == 0:
            return arr.reshape(0, 3)
        if arr.ndim == 1 and arr.shape[0] == 3:
            arr = arr.reshape(1, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"{self.path}: particle positions must be (N, 3) ZYX, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise InputError(f"{self.path}: particle positions must be finite numbers")
        return arr

    def _check_indices(self, indices, *, unique: bool = False) -> np.ndarray:
        idx = np.asarray(list(indices) if isinstance(indices, (set, frozenset)) else indices)
        idx = idx.reshape(-1)
        if idx.dtype == bool:
            if len(idx) != len(self._table):
                raise InputError(
                    f"{self.path}: mask of {len(idx)} for {len(self._table)} particles"
                )
            return np.flatnonzero(idx)
        try:
            as_float = idx.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"{self.path}: particle indices must be integers") from err
        if idx.size and (~np.isfinite(as_float) | (as_float != np.round(as_float))).any():
            raise InputError(f"{self.path}: particle indices must be integers")
        idx = as_float.astype(np.int64)
        n = len(self._table)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"{self.path}: particle index out of range (the store has {n})")
        if unique:
            if len(np.unique(idx)) != len(idx):
                raise InputError(f"{self.path}: repeated particle index")
            return idx
        return np.unique(idx)

    def _check_classes(self, numbers: Iterable) -> np.ndarray:
        arr = np.asarray(list(numbers) if not isinstance(numbers, np.ndarray) else numbers)
        arr = arr.reshape(-1)
        try:
            as_float = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"{self.path}: class numbers must be integers") from err
        if arr.size and (~np.isfinite(as_float) | (as_float != np.round(as_float))).any():
            raise InputError(f"{self.path}: class numbers must be integers")
        values = as_float.astype(np.int64)
        defined = set(self.class_numbers())
        unknown = sorted(set(values.tolist()) - defined - {0})
        if unknown:
            raise InputError(
                f"{self.path}: class {unknown[0]} is not defined (classes: "
                f"{sorted(defined) or 'none'}); add it first"
            )
        return values

    def _class_index(self, number: int) -> int:
        for i, c in enumerate(self._classes):
            if int(c["number"]) == int(number):
                return i
        raise InputError(f"{self.path}: there is no class {number}")

    def _check_name(self, name, *, exclude: int | None = None) -> str:
        name = str(name).strip()
        if not name:
            raise InputError(f"{self.path}: a class name cannot be empty")
        _check_store_text(name, "class name", self.path)
        for c in self._classes:
            if c["name"].casefold() == name.casefold() and int(c["number"]) != exclude:
                raise InputError(f"{self.path}: a class is already called {c['name']!r}")
        return name


# ----------------------------------------------------------------------------- helpers


def _empty_table() -> pd.DataFrame:
    table = make_particle_table(np.zeros((0, 3)))
    table["predicted_class"] = np.zeros(0, dtype=np.int64)
    return table


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Canonical dtypes after concatenation (concat of empty frames can lose them)."""
    out = table[STORE_COLUMNS].copy()
    for col in ("x", "y", "z", "score", "probability"):
        out[col] = out[col].astype(np.float64)
    for col in ("class_number", "predicted_class"):
        out[col] = out[col].astype(np.int64)
    for col in ("image_name", "tomo_name", "source"):
        out[col] = out[col].astype(str)
    return out.reset_index(drop=True)


def _user_store_path(tomogram_path: Path) -> Path:
    """A per-user store location for tomograms in read-only folders (unique per tomogram)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    digest = hashlib.sha1(str(tomogram_path.resolve()).encode()).hexdigest()[:10]
    name = store_path_for(tomogram_path).name
    return Path(base) / "napari-cryossl" / "annotations" / f"{digest}-{name}"
