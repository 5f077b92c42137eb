"""Classify the particles of many tomograms on a SLURM cluster: one job per particle file.

A job array through submitit (``pip install "napari-cryossl[cluster]"``): each job runs
``cryossl predict`` on one particle file (its own tomogram), on one GPU, and writes
``<out>/<stem>_predictions.star``. submitit does the scheduling, the retries and the
logs; this script only lists the work. ``--executor local`` runs the same jobs as local
processes (for a try on a workstation), ``debug`` in this process.

    python examples/slurm_predict.py classifier.pt tomo_*/particles.star --out predictions \\
        --partition gpu --gpus-per-job 1 --time 60 --max-parallel 20

Several GPUs per job: give ``--gpus-per-job N`` and each job runs
``torchrun --nproc_per_node=N -m napari_cryossl predict ...`` instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def predict_one(classifier: str, particles: str, out: str, gpus: int, extra: list[str]) -> str:
    """One job: ``cryossl predict`` on one particle file; returns the file written."""
    args = ["predict", classifier, particles, "--out", out, *extra]
    if gpus > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={gpus}", "-m", "napari_cryossl", *args]
        subprocess.run(command, check=True)
    else:
        from napari_cryossl.cli import main

        code = main(args)
        if code:
            raise RuntimeError(f"cryossl predict {particles} failed with exit code {code}")
    return out


def cluster_options(p: argparse.ArgumentParser, name: str) -> None:
    """The scheduler's options every job-array example takes."""
    p.add_argument("--executor", choices=("auto", "slurm", "local", "debug"), default="auto",
                   help="auto: SLURM when sbatch is found, else local processes")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--gpus-per-job", type=int, default=1)
    p.add_argument("--cpus-per-job", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=32)
    p.add_argument("--time", type=int, default=60, help="minutes per job")
    p.add_argument("--max-parallel", type=int, default=32, help="jobs of the array at a time")
    p.add_argument("--logs", type=Path, default=None, help="submitit's folder (default OUT/logs)")
    p.epilog = f"After --: more `cryossl {name}` options for every job"


def run_array(args, job, inputs: list[Path], per_job: list[list], name: str) -> int:
    """Submit ``job(*row)`` for each row of ``per_job`` (one per input) as one job array,
    wait, print each input's result or failure; 1 when any job failed."""
    import submitit

    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.logs or args.out / "logs"
    cluster = None if args.executor == "auto" else args.executor
    executor = submitit.AutoExecutor(folder=str(logs), cluster=cluster)
    params = {"timeout_min": args.time, "cpus_per_task": args.cpus_per_job}
    if executor.cluster == "slurm":
        params.update(slurm_partition=args.partition, slurm_gpus_per_node=args.gpus_per_job,
                      slurm_mem_gb=args.mem_gb, slurm_array_parallelism=args.max_parallel,
                      name=f"cryossl-{name}")
    else:
        params.update(gpus_per_node=0 if args.gpus_per_job <= 1 else args.gpus_per_job)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs = executor.map_array(job, *(list(column) for column in zip(*per_job, strict=True)))
    print(f"{len(jobs)} job(s) submitted ({executor.cluster}); logs in {logs}", flush=True)
    failed = 0
    for path, done in zip(inputs, jobs, strict=True):
        try:
            print(f"{path} -> {done.result()}", flush=True)
        except Exception as exc:  # one failed tomogram does not hide the others
            failed += 1
            print(f"{path}: failed ({exc}); log: {done.paths.stderr}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def split_extra(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """The example's own arguments, and those after ``--`` (for every job's command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut + 1 :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("classifier", type=Path, help="CLASSIFIER.pt from `cryossl finetune`")
    p.add_argument("particles", type=Path, nargs="+", help="particle files, one job each")
    p.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    cluster_options(p, "predict")
    own, extra = split_extra(argv)
    args = p.parse_args(own)
    outs = [str(args.out / f"{path.stem}_predictions{path.suffix}") for path in args.particles]
    rows = [[str(args.classifier), str(path), out, args.gpus_per_job, extra]
            for path, out in zip(args.particles, outs, strict=True)]
    return run_array(args, predict_one, args.particles, rows, "predict")


if __name__ == "__main__":
    raise SystemExit(main())
