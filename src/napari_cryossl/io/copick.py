"""copick projects: runs, tomograms and picks in, predicted classes out as picks.

A copick project (https://github.com/copick/copick) is described by a config ``.json``
(``config_type``, ``overlay_root``/``static_root``, ``pickable_objects``). Each run has
tomograms per voxel spacing and tomogram type (OME-Zarr) and picks per pickable object,
user and session, with positions in Å (``x_Å = x_voxel × voxel spacing``, voxel centres
at 0, 1, 2 ... like the plugin's voxels).

- `read_copick`: one ``(run name, tomogram path, particle table)`` per run that has a
  tomogram of that voxel spacing and type; picks in Å become voxels (÷ voxel spacing),
  ``class_number`` is the pickable object's ``label`` (or 0 when one object's picks are
  read as candidates), ``tomo_name`` the run name, ``score`` the pick's score.
- `write_copick`: a particle table with ``tomo_name`` = run name (predictions or labels)
  back as picks: per run, one picks set per class, in the pickable object whose ``label``
  is that class, with the plugin's user id and a session id, the probability as the
  point's ``score``.

copick is an optional dependency (``pip install "napari-cryossl[copick]"``, Python ≥ 3.11),
imported only inside these functions. Local (``local://`` or plain path) tomograms only:
the tomograms are opened by path with `open_tomogram`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.io.errors import InputError, InputWarning, _fail
from napari_cryossl.io.tables import make_particle_table

#: The user id the plugin writes its picks under.
COPICK_USER_ID = "napari-cryossl"


def is_copick_config(path) -> bool:
    """Whether `path` is a copick project config: a ``.json`` file with pickable_objects."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "pickable_objects" in data


def _open_root(config):
    path = Path(config)
    if not path.is_file():
        raise _fail(path, "no such copick config file")
    try:
        import copick
    except ImportError as err:
        raise _fail(
            path,
            'is a copick project; reading it needs copick: pip install "napari-cryossl[copick]"',
        ) from err
    try:
        return copick.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - pydantic / JSON / fsspec errors
        raise _fail(path, f"not a readable copick config: {err}") from err


def _local_path(url: str) -> Path:
    for prefix in ("local://", "file://"):
        if url.startswith(prefix):
            return Path(url[len(prefix) :])
    if "://" in url:
        raise InputError(
            f"{url}: only local copick tomograms can be read (copy the run to a local "
            "overlay or static root)"
        )
    return Path(url)


def _tomogram_path(tomogram) -> Path:
    url = tomogram.static_path if getattr(tomogram, "read_only", False) else tomogram.overlay_path
    return _local_path(str(url))


def _spacing_matches(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-3 * max(abs(float(a)), abs(float(b)), 1e-9)


def _choose_voxel_spacing(root, config, voxel_spacing):
    if voxel_spacing is not None:
        return float(voxel_spacing)
    sizes = sorted({float(vs.voxel_size) for run in root.runs for vs in run.voxel_spacings})
    if len(sizes) == 1:
        return sizes[0]
    if not sizes:
        raise _fail(config, "no run has a tomogram (no voxel spacing)")
    raise _fail(
        config,
        f"has several voxel spacings ({', '.join(f'{s:g}' for s in sizes)} Å): choose one "
        "(--copick-voxel-spacing)",
    )


def _particle_objects(root) -> dict[str, int]:
    return {
        o.name: int(o.label if o.label is not None else 1)
        for o in root.config.pickable_objects
        if o.is_particle
    }


def read_copick(
    config,
    *,
    voxel_spacing: float | None = None,
    tomo_type: str | None = None,
    object_name: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
) -> list[tuple[str, Path, pd.DataFrame]]:
    """The runs of a copick project as ``(run name, tomogram path, particle table)``.

    Args:
        config: the copick config ``.json``.
        voxel_spacing: Å per voxel of the tomograms to use (default: the project's only one).
        tomo_type: tomogram type, e.g. ``"wbp"`` (default: the only one at that spacing).
        object_name: read only this pickable object's picks, as unlabelled candidates
            (class 0); default: the picks of every particle object, class = its label.
        user_id, session_id: read only picks of this user / session.

    Returns:
        One entry per run with such a tomogram, in run order; runs without one are skipped
        with an `InputWarning`. Tables: x, y, z in voxels of that tomogram (Å ÷ voxel
        spacing), ``tomo_name`` = run name, ``source`` "imported", ``score`` from copick.

    Raises:
        InputError: copick missing, unreadable config, no such voxel spacing, tomogram type
            or object, or no run with such a tomogram.
    """
    root = _open_root(config)
    objects = _particle_objects(root)
    if object_name is not None and object_name not in objects:
        raise _fail(
            config,
            f"has no particle object {object_name!r} (objects: {', '.join(objects) or 'none'})",
        )
    size = _choose_voxel_spacing(root, config, voxel_spacing)
    runs = list(root.runs)
    if not runs:
        raise _fail(config, "has no runs")
    found_spacing = False
    types: set[str] = set()
    chosen: list[tuple[object, object]] = []
    for run in runs:
        vs = next((v for v in run.voxel_spacings if _spacing_matches(v.voxel_size, size)), None)
        if vs is None:
            continue
        found_spacing = True
        tomograms = list(vs.tomograms)
        types.update(t.tomo_type for t in tomograms)
        chosen.append((run, vs))
    if not found_spacing:
        raise _fail(config, f"no run has tomograms at voxel spacing {size:g} Å")
    if tomo_type is None:
        if len(types) != 1:
            raise _fail(
                config,
                f"has several tomogram types at {size:g} Å ({', '.join(sorted(types))}): "
                "choose one (--copick-tomo-type)",
            )
        tomo_type = next(iter(types))
    elif tomo_type not in types:
        raise _fail(
            config,
            f"has no tomogram of type {tomo_type!r} at {size:g} Å "
            f"(types: {', '.join(sorted(types)) or 'none'})",
        )
    out: list[tuple[str, Path, pd.DataFrame]] = []
    for run in runs:
        vs = next((v for r, v in chosen if r is run), None)
        tomos = [] if vs is None else vs.get_tomograms(tomo_type)
        if not tomos:
            warnings.warn(
                f"{config}: run {run.name!r} has no {tomo_type!r} tomogram at {size:g} Å; skipped",
                InputWarning,
                stacklevel=2,
            )
            continue
        path = _tomogram_path(tomos[0])
        out.append(
            (run.name, path, _run_table(run, size, objects, object_name, user_id, session_id))
        )
    return out


def _run_table(run, size, objects, object_name, user_id, session_id) -> pd.DataFrame:
    names = [object_name] if object_name is not None else list(objects)
    zyx, classes, scores = [], [], []
    for picks in run.get_picks(object_name=names, user_id=user_id, session_id=session_id):
        if picks.pickable_object_name not in objects:
            continue
        if hasattr(picks, "full_positions"):
            xyz = np.asarray(picks.full_positions(), dtype=np.float64).reshape(-1, 3)
        else:
            xyz = np.asarray(picks.numpy()[0], dtype=np.float64).reshape(-1, 3)
        if not len(xyz):
            continue
        zyx.append(xyz[:, ::-1] / size)
        label = 0 if object_name is not None else objects[picks.pickable_object_name]
        classes.append(np.full(len(xyz), label, dtype=np.int64))
        if hasattr(picks, "scores"):
            scores.append(np.asarray(picks.scores(), dtype=np.float64))
        else:
            scores.append(np.full(len(xyz), np.nan))
    if not zyx:
        return make_particle_table(np.zeros((0, 3)), source="imported", tomo_name=run.name)
    return make_particle_table(
        np.concatenate(zyx),
        class_number=np.concatenate(classes),
        score=np.concatenate(scores),
        source="imported",
        tomo_name=run.name,
    )


def write_copick(
    config,
    table: pd.DataFrame,
    *,
    voxel_spacing: float | None = None,
    user_id: str = COPICK_USER_ID,
    session_id: str = "1",
    objects: dict[int, str] | None = None,
) -> list[tuple[str, str, int]]:
    """Write a particle table's classes as copick picks: per run, one set per class.

    Args:
        config: the copick config ``.json`` to write into (its overlay).
        table: particle table; ``tomo_name`` is the run name, x, y, z voxels at
            `voxel_spacing`, ``class_number`` the class (0 = unlabelled: not written),
            ``probability`` (if finite) each point's ``score``.
        voxel_spacing: Å per voxel of the coordinates (default: the project's only one).
        user_id, session_id: the picks' user and session (existing sets are replaced).
        objects: class number -> pickable object name; default: the particle object whose
            ``label`` equals the class.

    Returns:
        ``(run name, object name, points)`` per set written.

    Raises:
        InputError: copick missing, unreadable config, a run or class the project lacks.
    """
    root = _open_root(config)
    size = _choose_voxel_spacing(root, config, voxel_spacing)
    by_label = {label: name for name, label in _particle_objects(root).items()}
    mapping = dict(objects) if objects is not None else by_label
    table = table[np.asarray(table["class_number"], dtype=np.int64) > 0]
    missing = sorted(set(np.asarray(table["class_number"], dtype=np.int64)) - set(mapping))
    if missing:
        raise _fail(
            config,
            f"has no particle object for class {', '.join(map(str, missing))} (labels: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(by_label.items())) or 'none'})",
        )
    runs = {r.name: r for r in root.runs}
    names = sorted(set(table["tomo_name"].astype(str)))
    unknown = [n for n in names if n not in runs]
    if unknown:
        raise _fail(config, f"has no run {unknown[0]!r} (particles' tomo_name)")
    written = []
    for name in names:
        rows = table[table["tomo_name"].astype(str) == name]
        for cls in sorted(set(np.asarray(rows["class_number"], dtype=np.int64))):
            part = rows[np.asarray(rows["class_number"], dtype=np.int64) == cls]
            xyz = part[["x", "y", "z"]].to_numpy(dtype=np.float64) * size
            obj = mapping[int(cls)]
            picks = runs[name].new_picks(
                object_name=obj, session_id=session_id, user_id=user_id, exist_ok=True
            )
            prob = part["probability"].to_numpy(dtype=np.float64) if "probability" in part else None
            if prob is not None and np.all(np.isfinite(prob)):
                try:
                    picks.from_numpy(xyz, scores=prob)
                except TypeError:  # copick without scores
                    picks.from_numpy(xyz)
            else:
                picks.from_numpy(xyz)
            written.append((name, obj, len(part)))
    return written


__all__ = ["COPICK_USER_ID", "is_copick_config", "read_copick", "write_copick"]
