"""Our pickers on the CZII CryoET Object Identification challenge's data, scored its way.

The challenge's public training set is dataset **10440** of the CZ cryoET Data Portal
(seven runs, TS_5_4 ... TS_99_9, 10.012 Å per voxel, 184 x 630 x 630 voxels; tomogram
types denoised, wbp, ctfdeconvolved, isonetcorrected) with ground-truth picks of six
kinds; 10445 and 10446 are mentioned with it (further runs and the simulated
companion set). Two steps:

    # 1. with internet: copy runs of a dataset into a local copick project
    python benchmarks/czii_portal.py fetch --dataset 10440 --out czii/ --tomo-type denoised
    # 2. offline: pick every kind in every run and score with the challenge's metric
    python benchmarks/czii_portal.py score czii/config.json --pickers dog dog-refined template

``fetch`` opens the dataset with copick's portal backend (`copick.from_czcdp_datasets`),
reads each run's tomogram (OME-Zarr, scale 0) and the portal's ground-truth picks of each
kind (positions in Å), and writes them into a local copick project (filesystem backend,
``config.json``), picks under user ``curation`` session ``0`` like the challenge's
Kaggle copy, with the challenge's kind names (`CZII_RADII_A`; the portal's object names
are mapped by `kind_of`). It needs ``pip install "napari-cryossl[copick]"
cryoet-data-portal`` and the network; not run here (no internet, 2026-12-07).

``score`` (`score_copick`) needs neither: for every run and kind it runs the pickers
with the kind's diameter (twice the challenge's radius; DoG and refined DoG) or template
(``template``: the built-in apoferritin and 80S ribosome for the apo-ferritin and
ribosome kinds, or ``--template KIND=MAP.mrc``; kinds without a template are left out of
that picker's score) and scores the picks against the ground truth with
`napari_cryossl.particles.picking_metrics.score_picks`: a hit within half the kind's radius,
one-to-one, TP/FP/FN pooled over runs, F-beta (beta 4) and the weighted mean with the
challenge's weights (`CZII_WEIGHTS`: beta-amylase 0, i.e. reported, not scored).
``tests/test_czii_portal.py`` runs ``score`` end to end on a small local copick project.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cryossl.particles.picking_metrics import CZII_RADII_A, CZII_WEIGHTS

#: The challenge's dataset ids on the portal: 10440, the public training set.
DATASETS = (10440, 10445, 10446)
#: Built-in complexes standing in for a kind's template (template picker).
BUILTIN_TEMPLATES = {"apo-ferritin": "apoferritin", "ribosome": "ribosome80S"}
#: Substrings of portal / copick object names, mapped to the challenge's kinds.
_ALIASES = (
    ("ferritin", "apo-ferritin"),
    ("amylase", "beta-amylase"),
    ("galactosidase", "beta-galactosidase"),
    ("ribosom", "ribosome"),
    ("thyroglobulin", "thyroglobulin"),
    ("virus", "virus-like-particle"),
    ("vlp", "virus-like-particle"),
)


def kind_of(object_name: str) -> str | None:
    """The challenge's kind of a copick / portal object name, or None."""
    name = str(object_name).lower()
    if name in CZII_RADII_A:
        return name
    return next((kind for key, kind in _ALIASES if key in name), None)


# --------------------------------------------------------------------------- fetch


def fetch(dataset_ids, out: Path, *, tomo_type: str = "denoised", voxel_spacing: float = 10.012,
          runs: int | None = None) -> Path:
    """Copy runs of Data Portal datasets into a local copick project; its config path.

    Needs the network, copick and cryoet-data-portal.
    """
    import copick
    import zarr

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    portal = copick.from_czcdp_datasets(
        list(dataset_ids), overlay_root=str(out / "portal_overlay"),
        overlay_fs_args={"auto_mkdir": True},
    )
    objects = {}
    for obj in portal.config.pickable_objects:
        kind = kind_of(obj.name)
        if kind is not None and obj.is_particle:
            objects[obj.name] = kind
    config = {
        "config_type": "filesystem",
        "name": f"CZII challenge, Data Portal datasets {', '.join(map(str, dataset_ids))}",
        "overlay_root": f"local://{(out / 'overlay').resolve()}",
        "static_root": f"local://{(out / 'static').resolve()}",
        "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [
            {"name": kind, "is_particle": True, "label": i + 1, "radius": radius}
            for i, (kind, radius) in enumerate(CZII_RADII_A.items())
        ],
    }
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config, indent=1))
    local = copick.from_file(str(config_path))
    for n, run in enumerate(portal.runs):
        if runs is not None and n >= runs:
            break
        vs = next(
            (v for v in run.voxel_spacings if abs(v.voxel_size - voxel_spacing) < 1e-2), None
        )
        tomos = [] if vs is None else vs.get_tomograms(tomo_type)
        if not tomos:
            print(f"{run.name}: no {tomo_type} tomogram at {voxel_spacing} Å; skipped")
            continue
        t0 = time.perf_counter()
        volume = np.asarray(zarr.open(tomos[0].zarr(), mode="r")["0"][:], dtype=np.float32)
        new_run = local.new_run(run.name)
        new_run.new_voxel_spacing(vs.voxel_size).new_tomogram(tomo_type).from_numpy(volume)
        points: dict[str, list[np.ndarray]] = {}
        for picks in run.picks:  # the portal's ground truth, positions in Å
            kind = objects.get(picks.pickable_object_name)
            if kind is not None:
                points.setdefault(kind, []).append(
                    np.asarray(picks.numpy()[0], dtype=np.float64).reshape(-1, 3)
                )
        counts = {}
        for kind, parts in points.items():
            xyz = np.concatenate(parts)
            new_run.new_picks(object_name=kind, session_id="0", user_id="curation").from_numpy(xyz)
            counts[kind] = len(xyz)
        print(f"{run.name}: {volume.shape} in {time.perf_counter() - t0:.0f} s, picks {counts}",
              flush=True)
    return config_path


# --------------------------------------------------------------------------- score


def _pick(picker: str, volume, diameter_px: float, template, voxel_size: float, angular_step):
    from napari_cryossl.particles.picking import pick_particles

    if picker in ("dog", "dog-refined"):
        refine = _refine_option()
        kw = {} if refine is None else {refine: picker == "dog-refined"}
        return pick_particles(volume, diameter_px, **kw)
    from napari_cryossl.particles.template_matching import load_template, match_template

    return match_template(
        volume,
        load_template(template, voxel_size),
        diameter_px=diameter_px,
        angular_step=angular_step,
        device="auto",
    )


def _refine_option() -> str | None:
    import inspect

    from napari_cryossl.particles.picking import pick_particles

    return next(
        (n for n in inspect.signature(pick_particles).parameters
         if "refine" in n or "centre" in n or "center" in n),
        None,
    )


def score_copick(
    config,
    *,
    pickers=("dog", "dog-refined", "template"),
    truth_user: str | None = "curation",
    voxel_spacing: float | None = None,
    tomo_type: str | None = None,
    templates: dict | None = None,
    radii_a: dict | None = None,
    weights: dict | None = None,
    max_runs: int | None = None,
    angular_step: float | None = None,
) -> dict:
    """Run the pickers on every run of a local copick project; score them per kind.

    Args:
        config: a copick config (filesystem backend, local tomograms).
        pickers: "dog" (no refinement), "dog-refined" (where `pick_particles` offers a
            refinement; else left out), "template".
        truth_user: the user whose picks are the ground truth (None: every user).
        voxel_spacing, tomo_type: which tomograms (default: the project's only ones).
        templates: {kind: template} for the template picker (a built-in name, a map or
            model file, or an array at the tomogram's voxel size); default
            `BUILTIN_TEMPLATES`.
        radii_a, weights: per kind (default the challenge's `CZII_RADII_A`, `CZII_WEIGHTS`).
        max_runs: score only the first runs.
        angular_step: template matching's angular step in degrees (default: its own,
            fine and slow on a CPU: about atan(1/8), 7°, thousands of rotations).

    Returns:
        {"runs": [...], "voxel_spacing": ..., "pickers": {picker: PickingScore.to_dict() +
        seconds per run}}.
    """
    import copick

    from napari_cryossl.io import open_tomogram
    from napari_cryossl.io.copick import read_copick
    from napari_cryossl.particles.picking_metrics import score_picks

    radii_a = dict(CZII_RADII_A if radii_a is None else radii_a)
    weights = dict(CZII_WEIGHTS if weights is None else weights)
    templates = dict(BUILTIN_TEMPLATES if templates is None else templates)
    pickers = [p for p in pickers if p != "dog-refined" or _refine_option() is not None]
    root = copick.from_file(str(config))
    label_kind = {}
    for obj in root.config.pickable_objects:
        kind = kind_of(obj.name)
        if obj.is_particle and kind in radii_a:
            label_kind[int(obj.label if obj.label is not None else 1)] = kind
    sizes = sorted({float(vs.voxel_size) for run in root.runs for vs in run.voxel_spacings})
    size = float(voxel_spacing) if voxel_spacing is not None else (sizes[0] if sizes else 1.0)
    runs = read_copick(config, voxel_spacing=size, tomo_type=tomo_type, user_id=truth_user)
    if max_runs is not None:
        runs = runs[:max_runs]
    truths, found = [], {p: [] for p in pickers}
    seconds = {p: [] for p in pickers}
    for run_name, path, table in runs:
        tomo = open_tomogram(path)
        truth = table[["x", "y", "z"]].copy()
        truth["kind"] = [label_kind.get(int(c)) for c in table["class_number"]]
        truth["tomo_name"] = run_name
        truths.append(truth[truth["kind"].notna()])
        for picker in pickers:
            t0 = time.perf_counter()
            for kind, radius in radii_a.items():
                if picker == "template" and kind not in templates:
                    continue
                picks = _pick(
                    picker, tomo, 2 * radius / size, templates.get(kind), size, angular_step
                )
                out = picks[["x", "y", "z"]].copy()
                out["kind"], out["tomo_name"] = kind, run_name
                found[picker].append(out)
            seconds[picker].append(time.perf_counter() - t0)
            print(f"{run_name} {picker}: {time.perf_counter() - t0:.1f} s", flush=True)
    truth = pd.concat(truths, ignore_index=True)
    radii_px = {k: r / size for k, r in radii_a.items()}
    result = {
        "config": str(config),
        "runs": [name for name, _, _ in runs],
        "voxel_spacing": size,
        "radii_a": radii_a,
        "weights": weights,
        "pickers": {},
    }
    for picker in pickers:
        kinds = {k: r for k, r in radii_px.items() if picker != "template" or k in templates}
        picks = (pd.concat(found[picker], ignore_index=True) if found[picker]
                 else truth.iloc[:0])
        score = score_picks(truth, picks, kinds, weights=weights)
        entry = score.to_dict()
        entry["seconds_per_run"] = float(np.mean(seconds[picker])) if seconds[picker] else 0.0
        entry["table"] = score.table()
        result["pickers"][picker] = entry
        print(f"{picker}: F4 {score.fbeta:.3f} (weighted)\n{score.table()}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="copy Data Portal runs into a local copick project")
    f.add_argument("--dataset", type=int, nargs="+", default=[DATASETS[0]])
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--tomo-type", default="denoised")
    f.add_argument("--voxel-spacing", type=float, default=10.012)
    f.add_argument("--runs", type=int, default=None)
    s = sub.add_parser("score", help="pick and score a local copick project")
    s.add_argument("config", type=Path)
    s.add_argument("--pickers", nargs="+", default=["dog", "dog-refined", "template"])
    s.add_argument("--truth-user", default="curation")
    s.add_argument("--voxel-spacing", type=float, default=None)
    s.add_argument("--tomo-type", default=None)
    s.add_argument("--template", action="append", default=[], metavar="KIND=SOURCE",
                   help="template of a kind (a map, model or built-in name); repeatable")
    s.add_argument("--max-runs", type=int, default=None)
    s.add_argument("--angular-step", type=float, default=None,
                   help="template matching's angular step, degrees")
    s.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch(args.dataset, args.out, tomo_type=args.tomo_type,
                    voxel_spacing=args.voxel_spacing, runs=args.runs))
        return 0
    templates = dict(BUILTIN_TEMPLATES)
    templates.update(dict(t.split("=", 1) for t in args.template))
    result = score_copick(
        args.config, pickers=args.pickers, truth_user=args.truth_user,
        voxel_spacing=args.voxel_spacing, tomo_type=args.tomo_type, templates=templates,
        max_runs=args.max_runs, angular_step=args.angular_step,
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
