"""Pick many tomograms with a learned picker on a SLURM cluster: one job per tomogram.

A job array through submitit (``pip install "napari-cryossl[cluster]"``): each job runs
``cryossl pick TOMO --model PICKER.pt`` on one tomogram, on one GPU when the job has one,
and writes ``<out>/<stem>_picks.star`` (rlnClassNumber and rlnAutopickFigureOfMerit per
pick). The scheduling, retries and logs are submitit's; ``--executor local`` runs the same
jobs as local processes.

    python examples/slurm_pick.py picker.pt tomograms/*.mrc --out picks \\
        --partition gpu --time 30 --max-parallel 20 -- --threshold 0.3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_predict import cluster_options, run_array, split_extra  # noqa: E402


def pick_one(picker: str, tomogram: str, out: str, extra: list[str]) -> str:
    """One job: ``cryossl pick`` on one tomogram; returns the file written."""
    from napari_cryossl.cli import main

    code = main(["pick", tomogram, "--model", picker, "--out", out, *extra])
    if code:
        raise RuntimeError(f"cryossl pick {tomogram} failed with exit code {code}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("picker", type=Path, help="PICKER.pt from `cryossl train-picker`")
    p.add_argument("tomograms", type=Path, nargs="+", help="tomograms (MRC or .zarr), one job each")
    p.add_argument("--out", type=Path, required=True, help="folder for the picks")
    cluster_options(p, "pick")
    own, extra = split_extra(argv)
    args = p.parse_args(own)
    rows = [[str(args.picker), str(t), str(args.out / f"{t.name.split('.')[0]}_picks.star"), extra]
            for t in args.tomograms]
    return run_array(args, pick_one, args.tomograms, rows, "pick")


if __name__ == "__main__":
    raise SystemExit(main())
