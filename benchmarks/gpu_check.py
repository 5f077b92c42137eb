"""The one GPU check: every GPU row of docs/benchmarks.md in one run, < 8 minutes on one GPU.

Installs nothing. Each stage has its own time budget and its own try/except: a stage
that fails records its error in the output and the next one runs. The stages share a
total budget (420 s on a GPU, ``--budget-s``); 60 s after it the process dumps its stacks
and exits, whatever is running, so the check ends within 8 minutes. After every stage
the results so far are written to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (a
Markdown table ready to paste into docs/benchmarks.md), so a run that is killed keeps
what it measured.

Stages (GPU sizes; ``--dry-run`` sizes in brackets):

  env        devices.describe(), torch, CUDA, cuDNN, the date, the GPU(s)
  peak       the device's dense bf16 peak from a table of datasheet figures by device
             name, and a measured 8192^3 bf16 matrix product as a second reference
             [fp32 512^3 on the CPU; no table entry]
  inference  rb3d and rb3d-small [rb3d-small only] at 32^3 [16^3], autocast bf16, a few
             batch sizes x channels_last_3d on/off, in-memory tensors on the device:
             subtomograms/s, achieved TFLOP/s (models.count_flops), fraction of the
             peak, time for 1 M subtomograms; the best setting again with
             cudnn.benchmark on
  pretrain   MoCo steps/s through the project's own ``train.iter_pretrain`` on
             simulated subtomograms, a fixed number of steps after warm-up
  finetune   fine-tuning steps/s through ``train.iter_finetune``, likewise
  predict    end-to-end ``predict`` from a memory-mapped MRC tomogram vs the model alone
             on in-memory tensors (same batch, same settings), DataLoader workers 0 and 4
  oom        ``predict`` with a batch that cannot fit under a memory cap
             (``torch.cuda.set_per_process_memory_fraction``): it must finish by halving
             [on the CPU a stand-in out-of-memory error above 2 subtomograms]
  ddp        with N > 1 visible GPUs: ``torchrun --nproc_per_node=N -m napari_cryossl
             pretrain`` (as ``python -m torch.distributed.run``) against a one-process run of the same CLI (per-GPU batch equal);
             N = 1: reported as N = 1, no run; no GPU: skipped [the one-process CLI run
             still runs, to prove the command and the parsing]
  picker     pick by example, speed (benchmarks/bench_picker_speed.py's ``measure``): the
             learned picker's dense inference over a 200 x 512 x 512 [40 x 80 x 80]
             simulated tomogram (the network over the chunks on the device, and
             ``iter_pick_with_model`` on the CPU beside it) against TomoTwin-style
             sliding-window embedding (box 37, stride 2; a few batches of 256 [2] timed,
             the rest extrapolated), as a ratio. Runs by default on a GPU only; a dry run
             runs it when named (``--stages picker``)

    python benchmarks/gpu_check.py --out benchmarks/out/gpu          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry      # anywhere, < 1 min

Without CUDA the dry run is chosen automatically. ``benchmarks/gpu_check.sh`` wraps the
GPU command for the lent machine (docs/benchmarks.md, "GPU rows").
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, from the vendors' datasheets,
#: by a pattern of ``torch.cuda.get_device_name()``; the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"GH200", 989.4),
    (r"H200", 989.4),  # SXM; same tensor cores as the H100 SXM
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.4),  # SXM / HBM3
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.1),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"RTX 4090", 165.2),
)

#: The stages in the order they run, with their time budgets in seconds (GPU, dry run).
STAGES: tuple[tuple[str, float, float], ...] = (
    ("env", 10, 10),
    ("peak", 20, 5),
    ("inference", 100, 10),
    ("pretrain", 80, 10),
    ("finetune", 50, 6),
    ("predict", 60, 10),
    ("oom", 40, 5),
    ("ddp", 110, 45),  # last: the longest, and on one GPU nothing to run
)

#: Stages that run by default on a GPU only (a dry run runs them when ``--stages`` names
#: them), after the others, with their budgets (GPU, dry run).
GPU_DEFAULT_STAGES: tuple[tuple[str, float, float], ...] = (("picker", 150, 60),)

SKIPPED_NO_GPU = "skipped: no GPU"


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    box: int
    presets: tuple[str, ...]
    infer_batches: tuple[int, ...]
    min_time_s: float  # each timed setting runs at least this long...
    max_iters: int  # ...or this many batches
    train_presets: tuple[str, ...]
    pretrain_batches: tuple[int, ...]
    finetune_batches: tuple[int, ...]
    train_warmup: int
    train_steps: int
    predict_n: int
    predict_batch: int
    predict_workers: tuple[int, ...]
    predict_repeats: int
    ddp_preset: str
    ddp_batch_per_gpu: int
    ddp_steps: int
    oom_preset: str
    oom_batch: int
    oom_n: int
    oom_headroom_gib: float

    @classmethod
    def gpu(cls) -> Sizes:
        return cls(
            box=32,
            presets=("rb3d", "rb3d-small"),
            infer_batches=(64, 256, 1024),
            min_time_s=1.0,
            max_iters=500,
            train_presets=("rb3d-small", "rb3d"),
            pretrain_batches=(16, 128),
            finetune_batches=(32, 128),
            train_warmup=5,
            train_steps=30,
            predict_n=4096,
            predict_batch=256,
            predict_workers=(0, 4),
            predict_repeats=2,
            ddp_preset="rb3d-small",
            ddp_batch_per_gpu=64,
            ddp_steps=40,
            oom_preset="rb3d",
            oom_batch=4096,
            oom_n=5120,
            oom_headroom_gib=3.0,
        )

    @classmethod
    def dry(cls) -> Sizes:
        return cls(
            box=16,
            presets=("rb3d-small",),
            infer_batches=(4, 8),
            min_time_s=0.05,
            max_iters=5,
            train_presets=("rb3d-small",),
            pretrain_batches=(4,),
            finetune_batches=(4,),
            train_warmup=1,
            train_steps=3,
            predict_n=24,
            predict_batch=8,
            predict_workers=(0,),
            predict_repeats=1,
            ddp_preset="rb3d-small",
            ddp_batch_per_gpu=4,
            ddp_steps=3,
            oom_preset="rb3d-small",
            oom_batch=8,
            oom_n=12,
            oom_headroom_gib=0.0,
        )


@dataclass
class Context:
    device: object  # torch.device
    dry: bool
    sizes: Sizes
    out: Path
    work: Path  # scratch folder (data, checkpoints)
    deadline: float = math.inf  # of the stage running now (time.monotonic())
    results: dict = field(default_factory=dict)
    _volumes: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def peak_tflops(self) -> float | None:
        """The reference the fractions are taken of: the table's peak, else the matmul's."""
        peak = self.results.get("peak", {}).get("rows", [{}])
        row = peak[0] if peak else {}
        return row.get("table_tflops") or row.get("matmul_tflops")

    def simulated(self, n: int):
        """``n`` simulated subtomograms (a few hundred simulated once, tiled) and labels."""
        box = self.sizes.box
        if box not in self._volumes:
            from napari_cryossl.simulate import SimulationConfig, simulate_subtomograms

            per_class = 4 if self.dry else 32
            cfg = SimulationConfig(n_classes=4, box_size=box, snr=0.5)
            self._volumes[box] = simulate_subtomograms(per_class, cfg, seed=0)
        volumes, labels = self._volumes[box]
        idx = np.arange(n) % len(volumes)
        return volumes[idx], labels[idx]


# --------------------------------------------------------------------------- helpers


def timed_rate(fn: Callable[[], object], ctx: Context, items_per_call: int) -> float:
    """Items per second of ``fn``: two warm-up calls, then calls until ``min_time_s``
    (or ``max_iters``) have passed, with device synchronisation around the timing."""
    for _ in range(2):
        fn()
    ctx.sync()
    t0 = time.perf_counter()
    n = 0
    while True:
        fn()
        n += 1
        if n >= ctx.sizes.max_iters:
            break
        if n % 4 == 0:  # synchronise now and then: the timing must see the GPU's work
            ctx.sync()
            if time.perf_counter() - t0 >= ctx.sizes.min_time_s:
                break
    ctx.sync()
    return n * items_per_call / (time.perf_counter() - t0)


def forward_fn(model, x, device, dtype) -> Callable[[], object]:
    """``model(x)`` under the project's autocast (``dtype`` None: float32)."""
    from napari_cryossl.nn.devices import autocast

    def run():
        with autocast(device, dtype):
            return model(x)

    return run


def _no_checkpoint_writes(generator) -> bool:
    """Make a training generator's checkpoint writes no-ops (the rb3d state is GBs).

    The step rate is timed between steps and never includes a write; this only keeps
    the writes out of the 8-minute budget. Returns whether it could (a refactored loop
    without a ``job`` local just writes its checkpoints).
    """
    frame = getattr(generator, "gi_frame", None)
    job = frame.f_locals.get("job") if frame is not None else None
    if job is None or not hasattr(job, "save"):
        return False
    job.save = lambda **_kw: None
    return True


def _step_rate(generator, warmup: int, steps: int) -> tuple[float, float]:
    """Steps/s of a training generator between the status of step ``warmup`` and that
    of step ``warmup + steps``; also the last loss."""
    t_start = None
    loss = float("nan")
    try:
        for status in generator:
            if status.event != "step":
                continue
            loss = float(status.loss) if status.loss is not None else loss
            if status.step == warmup:
                t_start = time.perf_counter()
            elif status.step >= warmup + steps:
                return steps / (time.perf_counter() - t_start), loss
    finally:
        generator.close()
    raise RuntimeError(f"the run ended before step {warmup + steps}")


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        mag = math.floor(math.log10(abs(value)))
        return f"{value:.{max(digits - 1 - mag, 0)}f}"
    return str(value)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- stages


def stage_env(ctx: Context) -> dict:
    import torch

    from napari_cryossl.nn.devices import describe

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 1024**3, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                }
            )
    commit = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    row = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": describe(),
        "device_used": str(ctx.device),
        "dry_run": ctx.dry,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": commit,
    }
    print(
        f"{row['date']}: {row['device']}; torch {row['torch']}, CUDA {row['cuda']}, "
        f"cuDNN {row['cudnn']}{' (dry run)' if ctx.dry else ''}",
        flush=True,
    )
    return {"rows": [row]}


def stage_peak(ctx: Context) -> dict:
    import torch

    row: dict = {"table_tflops": None, "table_entry": None}
    if ctx.cuda:
        name = torch.cuda.get_device_name(ctx.device)
        for pattern, tflops in PEAK_BF16_TFLOPS:
            if re.search(pattern, name):
                row["table_tflops"], row["table_entry"] = tflops, pattern
                break
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 512, torch.float32
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    rate = timed_rate(lambda: torch.matmul(a, b), ctx, 1)
    row.update(
        matmul=f"{n}^3 {str(dtype).removeprefix('torch.')}",
        matmul_tflops=rate * 2 * n**3 / 1e12,
    )
    row["reference"] = (
        f"datasheet dense bf16 peak ({row['table_tflops']} TFLOP/s)"
        if row["table_tflops"]
        else f"measured {row['matmul']} matrix product (no datasheet entry for this device)"
    )
    return {"rows": [row]}


def stage_inference(ctx: Context) -> dict:
    import torch

    from napari_cryossl.nn.devices import amp_dtype
    from napari_cryossl.nn.models import Classifier, build_encoder, count_flops, for_inference

    s = ctx.sizes
    dtype = amp_dtype(ctx.device)
    peak = ctx.peak_tflops()
    rows, best_rows, notes = [], [], []
    for preset in s.presets:
        torch.manual_seed(0)
        model = Classifier(build_encoder(preset, s.box), n_classes=10)
        flops = count_flops(model, s.box)
        # as `predict` runs it: Conv+BatchNorm fused, FC weights in the autocast dtype
        model = for_inference(model, dtype).to(ctx.device)
        best = None
        for channels_last in (True, False):
            fmt_ = torch.channels_last_3d if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt_)
            for batch in s.infer_batches:
                if ctx.left() < 2 * s.min_time_s:
                    notes.append(f"{preset} batch {batch} cl {channels_last}: out of stage time")
                    continue
                row = {"preset": preset, "box": s.box, "batch": batch,
                       "channels_last": channels_last,
                       "amp": str(dtype).removeprefix("torch.") if dtype else "float32"}
                try:
                    x = torch.randn(batch, 1, s.box, s.box, s.box, device=ctx.device)
                    x = x.contiguous(memory_format=fmt_)
                    if ctx.cuda:
                        torch.cuda.reset_peak_memory_stats(ctx.device)
                    with torch.inference_mode():
                        rate = timed_rate(forward_fn(model, x, ctx.device, dtype), ctx, batch)
                    row["subtomograms_per_s"] = rate
                    if ctx.cuda:
                        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 1024**3
                    del x
                except Exception as exc:  # e.g. out of memory at the largest batch
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    if ctx.cuda:
                        torch.cuda.empty_cache()
                rows.append(row)
                if "subtomograms_per_s" in row and (
                    best is None or row["subtomograms_per_s"] > best["subtomograms_per_s"]
                ):
                    best = row
        if best is None:
            continue
        rate = best["subtomograms_per_s"]
        other = [
            r.get("subtomograms_per_s")
            for r in rows
            if r["preset"] == preset and r["batch"] == best["batch"]
            and r["channels_last"] != best["channels_last"]
        ]
        summary = {
            "preset": preset,
            "box": s.box,
            "amp": best["amp"],
            "batch": best["batch"],
            "channels_last": best["channels_last"],
            "gflop_per_subtomogram": flops / 1e9,
            "subtomograms_per_s": rate,
            "tflops": rate * flops / 1e12,
            "fraction_of_peak": rate * flops / 1e12 / peak if peak else None,
            "seconds_per_million": 1e6 / rate,
            "other_layout_subtomograms_per_s": other[0] if other else None,
            "batches_tried": list(s.infer_batches),
        }
        if ctx.cuda and ctx.left() > 3 * s.min_time_s:
            fmt_ = torch.channels_last_3d if best["channels_last"] else torch.contiguous_format
            model = model.to(memory_format=fmt_)
            x = torch.randn(best["batch"], 1, s.box, s.box, s.box, device=ctx.device)
            x = x.contiguous(memory_format=fmt_)
            torch.backends.cudnn.benchmark = True
            try:
                with torch.inference_mode():
                    summary["cudnn_benchmark_subtomograms_per_s"] = timed_rate(
                        forward_fn(model, x, ctx.device, dtype), ctx, best["batch"]
                    )
            except Exception as exc:  # keep the rows measured so far
                summary["cudnn_benchmark_error"] = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                torch.backends.cudnn.benchmark = False
            del x
        best_rows.append(summary)
        print(
            f"  inference {preset}: {rate:.0f} subtomograms/s at batch {best['batch']} "
            f"(channels_last {best['channels_last']}), {summary['tflops']:.3g} TFLOP/s",
            flush=True,
        )
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"rows": best_rows, "sweep": rows, "notes": notes}


def _train_stage(ctx: Context, kind: str) -> dict:
    import torch

    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.train import FinetuneConfig, PretrainConfig, iter_finetune, iter_pretrain

    s = ctx.sizes
    batches = s.pretrain_batches if kind == "pretrain" else s.finetune_batches
    rows, notes = [], []
    # the default batch of every preset first: the rows that matter most if time runs out
    for batch, preset in ((b, p) for b in batches for p in s.train_presets):
        if ctx.left() < 5:
            notes.append(f"{preset} batch {batch}: out of stage time")
            continue
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        row = {"preset": preset, "box": s.box, "batch": batch,
               "steps_timed": s.train_steps, "warmup_steps": s.train_warmup}
        try:
            n = (s.train_warmup + s.train_steps + 1) * batch
            volumes, labels = ctx.simulated(n)
            data = SubtomogramSet.from_arrays(volumes, labels, voxel_size=10.0)
            device = str(ctx.device)
            out = ctx.work / f"{kind}_{preset}_{batch}.pt"
            if kind == "pretrain":
                config = PretrainConfig(method="moco", preset=preset, epochs=1,
                                        batch_size=batch, device=device, seed=0)
                gen = iter_pretrain(data, config, out)
                row["method"] = "moco"
            else:
                config = FinetuneConfig(preset=preset, epochs=1, min_steps=0,
                                        batch_size=batch, val_fraction=0.0,
                                        device=device, seed=0)
                gen = iter_finetune(data, config, out)
                row["recipe"] = "default"
            row["checkpoint_writes_skipped"] = _no_checkpoint_writes(gen)
            rate, loss = _step_rate(gen, s.train_warmup, s.train_steps)
            row.update(steps_per_s=rate, subtomograms_per_s=rate * batch, last_loss=loss)
            if ctx.cuda:
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 1024**3
            print(f"  {kind} {preset} batch {batch}: {rate:.2f} steps/s", flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            if ctx.cuda:
                torch.cuda.empty_cache()
        rows.append(row)
    return {"rows": rows, "notes": notes}


def stage_pretrain(ctx: Context) -> dict:
    return _train_stage(ctx, "pretrain")


def stage_finetune(ctx: Context) -> dict:
    return _train_stage(ctx, "finetune")


def _write_tomogram(ctx: Context, n: int, name: str, spacing: int | None = None):
    """A noise tomogram MRC holding ``n`` boxes on a grid; returns (path, table)."""
    from napari_cryossl.io import make_particle_table, write_mrc

    box = ctx.sizes.box
    spacing = spacing or box
    side = int(np.ceil(np.cbrt(n)))
    shape = (side * spacing + box,) * 3
    rng = np.random.default_rng(0)
    vol = rng.standard_normal(shape, dtype=np.float32)
    path = ctx.work / name
    write_mrc(path, vol, 10.0)
    del vol
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (grid[:n] * spacing + box).astype(float)
    return path, make_particle_table(centres, source="imported", tomo_name=path.name)


def stage_predict(ctx: Context) -> dict:
    import torch

    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.io import open_tomogram
    from napari_cryossl.nn.devices import amp_dtype, memory_format
    from napari_cryossl.nn.models import Classifier, build_encoder
    from napari_cryossl.particles.dataset import SubtomogramSet

    s = ctx.sizes
    path, table = _write_tomogram(ctx, s.predict_n, "predict_tomogram.mrc")
    data = SubtomogramSet.from_table(table, open_tomogram(path), s.box)
    rows, notes = [], []
    dtype = amp_dtype(ctx.device)
    for preset in s.presets:
        torch.manual_seed(0)
        fmt_ = memory_format(ctx.device)
        model = Classifier(build_encoder(preset, s.box), n_classes=10)
        model = model.to(ctx.device, memory_format=fmt_).eval()
        x = torch.randn(s.predict_batch, 1, s.box, s.box, s.box, device=ctx.device)
        x = x.contiguous(memory_format=fmt_)
        with torch.inference_mode():
            model_rate = timed_rate(forward_fn(model, x, ctx.device, dtype), ctx, s.predict_batch)
        del x
        # warm-up: a first small predict (cuDNN, pinned-memory pool)
        predict(model, data.subset(np.arange(min(len(data), s.predict_batch))),
                batch_size=s.predict_batch, device=ctx.device)
        for workers in s.predict_workers:
            if ctx.left() < 3:
                notes.append(f"{preset} workers {workers}: out of stage time")
                continue
            best = 0.0
            for _ in range(s.predict_repeats):
                t0 = time.perf_counter()
                pred = predict(model, data, batch_size=s.predict_batch, device=ctx.device,
                               num_workers=workers)
                best = max(best, len(data) / (time.perf_counter() - t0))
            assert len(pred) == len(data)
            rows.append({
                "preset": preset, "box": s.box, "batch": s.predict_batch, "workers": workers,
                "n": len(data), "e2e_subtomograms_per_s": best,
                "model_subtomograms_per_s": model_rate, "ratio": best / model_rate,
                "seconds_per_million_e2e": 1e6 / best,
            })
            print(f"  predict {preset} workers {workers}: {best:.0f}/s end to end, "
                  f"{model_rate:.0f}/s model alone ({best / model_rate:.0%})", flush=True)
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"rows": rows, "notes": notes}


_STEP_LINE = re.compile(r"step (\d+)/(\d+) .*? lr \S+ (?:([\d.]+) steps/s)?")


def run_logged(cmd: list[str], *, env: dict, cwd: Path, timeout: float) -> tuple[int, str, dict]:
    """Run a CLI training command; return (exit code, its output, {step: arrival time}).

    ``CRYOSSL_LOG_INTERVAL=0`` makes the CLI print (and flush) a line after every step;
    the time each step's line arrives here times the steps to the millisecond, where the
    printed rate has two digits. Under torchrun every rank prints: the first arrival of
    each step counts (DDP steps are in lockstep). The whole process group is killed at
    ``timeout``.
    """
    import signal
    import threading

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    arrivals: dict[int, float] = {}
    lines = []
    try:
        for line in proc.stdout:
            now = time.perf_counter()
            lines.append(line)
            for m in _STEP_LINE.finditer(line):  # two ranks' lines can share one
                arrivals.setdefault(int(m.group(1)), now)
        code = proc.wait()
    finally:
        timer.cancel()
        kill()  # torchrun's workers too, should any be left
    return code, "".join(lines), arrivals


def parse_step_rate(log: str) -> float | None:
    """Steps/s that a ``cryossl pretrain`` log (``CRYOSSL_LOG_INTERVAL=0``) printed at its
    last step, before the checkpoint write; the median over the ranks' lines."""
    rates = [
        float(m.group(3))
        for m in _STEP_LINE.finditer(log)
        if m.group(1) == m.group(2) and m.group(3)
    ]
    return float(np.median(rates)) if rates else None


def arrival_rate(arrivals: dict, warmup: int) -> float | None:
    """Steps/s between the lines of step ``warmup`` and of the last step."""
    last = max(arrivals, default=0)
    if warmup not in arrivals or last <= warmup:
        return None
    return (last - warmup) / (arrivals[last] - arrivals[warmup])


def ddp_command(n_procs: int, star: Path, tomogram: Path, out: Path, *, preset: str, box: int,
                batch: int, device: str) -> list[str]:
    """The CLI pretraining command; under ``torch.distributed.run`` (torchrun) when
    ``n_procs`` > 1."""
    launch = [sys.executable]
    if n_procs > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}"]
    return [
        *launch, "-m", "napari_cryossl", "pretrain", str(star), "--tomogram", str(tomogram),
        "--box-size", str(box), "--method", "moco", "--preset", preset, "--epochs", "1",
        "--batch-size", str(batch), "--device", device, "--out", str(out), "--overwrite",
    ]


def stage_ddp(ctx: Context) -> dict:
    import torch

    from napari_cryossl.io import write_particles

    s = ctx.sizes
    n_gpus = torch.cuda.device_count() if ctx.cuda else 0
    procs = [1, n_gpus] if n_gpus > 1 else [1]
    if n_gpus == 1:
        return {"status": "skipped: one GPU visible (N=1); DDP needs 2 or more",
                "rows": [{"n_gpus": 1}]}
    path, table = _write_tomogram(
        ctx, s.ddp_steps * s.ddp_batch_per_gpu * max(procs), "ddp_tomogram.mrc",
        spacing=max(s.box // 2, 1),
    )
    env = dict(os.environ, CRYOSSL_LOG_INTERVAL="0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if ctx.dry:
        env["OMP_NUM_THREADS"] = "1"
    rows = []
    for n in procs:
        batch = s.ddp_batch_per_gpu * n
        star = ctx.work / f"ddp_{n}.star"
        write_particles(table.iloc[: s.ddp_steps * batch].reset_index(drop=True), star,
                        voxel_size=10.0)
        cmd = ddp_command(n, star, path, ctx.work / f"ddp_{n}.pt", preset=s.ddp_preset,
                          box=s.box, batch=batch, device="cuda" if ctx.cuda else "cpu")
        row = {"processes": n, "preset": s.ddp_preset, "box": s.box, "global_batch": batch,
               "steps": s.ddp_steps, "command": " ".join(cmd[1:])}
        t0 = time.perf_counter()
        code, log, arrivals = run_logged(cmd, env=env, cwd=ctx.work, timeout=max(ctx.left(), 1))
        row["wall_s"] = time.perf_counter() - t0
        rate = arrival_rate(arrivals, s.train_warmup)
        if code != 0 or rate is None:
            row["error"] = f"exit {code}: {log[-600:]}"
            if code < 0:
                row["error"] = f"killed at the stage's time budget: {log[-400:]}"
        else:
            row.update(steps_per_s=rate, subtomograms_per_s=rate * batch,
                       printed_steps_per_s=parse_step_rate(log),
                       timed_steps=max(arrivals) - s.train_warmup)
        rows.append(row)
        print(f"  ddp {n} process(es): {row.get('steps_per_s', 'error')} steps/s", flush=True)
    if len(rows) == 2 and all("steps_per_s" in r for r in rows):
        rows[1]["scaling_vs_1_gpu"] = rows[1]["subtomograms_per_s"] / rows[0]["subtomograms_per_s"]
        rows[1]["efficiency"] = rows[1]["scaling_vs_1_gpu"] / n_gpus
    result: dict = {"rows": rows}
    if not ctx.cuda:
        result["status"] = f"{SKIPPED_NO_GPU} (the one-process CLI run ran on the CPU)"
    return result


def stage_oom(ctx: Context) -> dict:
    import torch

    from napari_cryossl.analysis.predict import iter_predict
    from napari_cryossl.nn.models import Classifier, build_encoder
    from napari_cryossl.particles.dataset import SubtomogramSet

    s = ctx.sizes
    torch.manual_seed(0)
    model = Classifier(build_encoder(s.oom_preset, s.box), n_classes=10).to(ctx.device).eval()
    volumes = np.random.default_rng(0).standard_normal((s.oom_n, s.box, s.box, s.box),
                                                       dtype=np.float32)
    data = SubtomogramSet.from_arrays(volumes, voxel_size=10.0)
    tried: list[int] = []
    limit = 2  # the stand-in on the CPU fails above this many subtomograms

    def record(_module, args):
        tried.append(int(args[0].shape[0]))
        if not ctx.cuda and args[0].shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in: gpu_check dry run)")

    handle = model.encoder.register_forward_pre_hook(record)
    row = {"preset": s.oom_preset, "box": s.box, "batch_asked": s.oom_batch, "n": s.oom_n}
    try:
        if ctx.cuda:
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(ctx.device).total_memory
            allowed = torch.cuda.memory_reserved(ctx.device) + s.oom_headroom_gib * 1024**3
            # the input batch itself must fit: it is copied before the model runs
            allowed += s.oom_batch * s.box**3 * 4
            fraction = min(allowed / total, 1.0)
            torch.cuda.set_per_process_memory_fraction(fraction, ctx.device)
            row["memory_cap_gib"] = allowed / 1024**3
        t0 = time.perf_counter()
        statuses = []
        result = None
        for item in iter_predict(model, data, batch_size=s.oom_batch, device=ctx.device):
            if hasattr(item, "n_steps"):
                statuses.append(item)
            else:
                result = item
        row["wall_s"] = time.perf_counter() - t0
    finally:
        handle.remove()
        if ctx.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
            torch.cuda.empty_cache()
    assert result is not None and len(result) == s.oom_n, "predict did not return every row"
    halvings = sum(1 for a, b in zip(tried, tried[1:], strict=False) if b < a)
    row.update(
        finished=True,
        rows_returned=len(result),
        final_batch=int(statuses[-1].metrics["batch_size"]),
        halvings=halvings,
        batch_sizes_tried=sorted(set(tried), reverse=True),
        subtomograms_per_s=s.oom_n / row["wall_s"],
        simulated=not ctx.cuda,
    )
    print(f"  oom: asked {s.oom_batch}, finished at batch {row['final_batch']} "
          f"after {halvings} halving(s)", flush=True)
    out = {"rows": [row]}
    if not ctx.cuda:
        out["status"] = f"{SKIPPED_NO_GPU} (a stand-in out-of-memory error above {limit} " \
                        "subtomograms ran the halving)"
    return out


def stage_picker(ctx: Context) -> dict:
    """Pick by example, speed: `bench_picker_speed.measure` on the device."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_picker_speed", Path(__file__).resolve().parent / "bench_picker_speed.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_picker_speed", bench)
    spec.loader.exec_module(bench)
    sizes = dict(shape=(40, 80, 80), windows=2, batch=2, train_steps=2) if ctx.dry else dict(
        shape=(200, 512, 512), windows=8 * 256, batch=256, train_steps=20
    )
    row = bench.measure(
        device=ctx.device, threads=None, cpu_path=True, device_path=True, work=ctx.work,
        log=lambda text: print(f"  picker: {text}", flush=True), **sizes,
    )
    return {"rows": [row]}


STAGE_FUNCTIONS: dict[str, Callable[[Context], dict]] = {
    "env": stage_env,
    "peak": stage_peak,
    "inference": stage_inference,
    "pretrain": stage_pretrain,
    "finetune": stage_finetune,
    "predict": stage_predict,
    "oom": stage_oom,
    "ddp": stage_ddp,
    "picker": stage_picker,
}


# --------------------------------------------------------------------------- output


def markdown(results: dict) -> str:
    """The rows as Markdown, ready to paste into docs/benchmarks.md."""
    env = (results.get("env", {}).get("rows") or [{}])[0]
    peak = (results.get("peak", {}).get("rows") or [{}])[0]
    lines = [
        f"Measured {env.get('date', '?')} by `benchmarks/gpu_check.py`"
        f"{' **(CPU dry run: tiny sizes, not figures)**' if env.get('dry_run') else ''}: "
        f"{env.get('device', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}; commit {env.get('commit')}.",
        "",
        f"Peak used for the fractions: {peak.get('reference', 'none')}; measured "
        f"{peak.get('matmul', '?')} matrix product: {fmt(peak.get('matmul_tflops'))} TFLOP/s.",
        "",
        "| row | setting | subtomograms/s | achieved TFLOP/s | of peak | 1 M subtomograms | note |",
        "|---|---|---|---|---|---|---|",
    ]

    def add(row_name, setting, rate, tflops=None, frac=None, million=None, note=""):
        frac_text = f"{fmt(100 * frac, 2)} %" if frac is not None else "–"
        lines.append(
            f"| {row_name} | {setting} | {fmt(rate)} | {fmt(tflops)} | {frac_text} | "
            f"{fmt_duration(million)} | {note} |"
        )

    def status_row(stage: str, name: str) -> bool:
        st = results.get(stage, {}).get("status", "not run")
        if st != "ok" and not results.get(stage, {}).get("rows"):
            lines.append(f"| {name} | | | | | | {st} |")
            return True
        return False

    if not status_row("inference", "inference"):
        for r in results["inference"]["rows"]:
            note = (f"channels_last_3d {'off' if r['channels_last'] else 'on'}: "
                    f"{fmt(r['other_layout_subtomograms_per_s'])}/s; "
                    f"{fmt(r['gflop_per_subtomogram'])} GFLOP/subtomogram")
            if r.get("cudnn_benchmark_subtomograms_per_s"):
                note += f"; cudnn.benchmark: {fmt(r['cudnn_benchmark_subtomograms_per_s'])}/s"
            add(f"inference `{r['preset']}` {r['box']}³", f"{r['amp']}, batch {r['batch']} "
                f"(best of {', '.join(map(str, r['batches_tried']))}), channels_last_3d "
                f"{'on' if r['channels_last'] else 'off'}", r["subtomograms_per_s"],
                r["tflops"], r["fraction_of_peak"], r["seconds_per_million"], note)
    for stage, label in (("pretrain", "MoCo pretraining step"), ("finetune", "fine-tuning step")):
        if status_row(stage, label):
            continue
        for r in results[stage]["rows"]:
            if "error" in r:
                add(f"{label} `{r['preset']}`", f"batch {r['batch']}", None, note=r["error"])
                continue
            add(f"{label} `{r['preset']}` {r['box']}³", f"batch {r['batch']}",
                r["subtomograms_per_s"], million=1e6 / r["subtomograms_per_s"],
                note=f"{fmt(r['steps_per_s'])} steps/s over {r['steps_timed']} steps")
    if not status_row("predict", "predict end to end"):
        for r in results["predict"]["rows"]:
            add(f"`predict` end to end `{r['preset']}` {r['box']}³",
                f"mmap'd MRC, batch {r['batch']}, {r['workers']} workers",
                r["e2e_subtomograms_per_s"], million=r["seconds_per_million_e2e"],
                note=f"model alone {fmt(r['model_subtomograms_per_s'])}/s: "
                f"**{100 * r['ratio']:.0f} %**")
    ddp = results.get("ddp", {})
    ddp_status = ddp.get("status", "not run")
    for r in ddp.get("rows", []):
        if "processes" not in r:
            add("DDP pretraining", f"N = {r.get('n_gpus')}", None, note=ddp_status)
            continue
        note = r.get("error", "")[:120] or f"{fmt(r['steps_per_s'])} steps/s"
        if "scaling_vs_1_gpu" in r:
            note += f"; {r['scaling_vs_1_gpu']:.2f}× one GPU ({100 * r['efficiency']:.0f} % efficiency)"
        if ddp_status != "ok":
            note += f"; {ddp_status}"
        add(f"DDP pretraining `{r['preset']}` {r['box']}³", f"{r['processes']} process(es), "
            f"global batch {r['global_batch']}", r.get("subtomograms_per_s"), note=note)
    if not ddp.get("rows"):
        lines.append(f"| DDP pretraining | | | | | | {ddp_status} |")
    oom = results.get("oom", {})
    if not status_row("oom", "OOM fallback"):
        r = oom["rows"][0]
        note = (f"finished: {r['rows_returned']}/{r['n']} rows after {r['halvings']} halving(s), "
                f"batches tried {r['batch_sizes_tried']}")
        if r.get("memory_cap_gib"):
            note += f", memory capped at {r['memory_cap_gib']:.1f} GiB"
        if oom.get("status", "ok") != "ok":
            note += f"; {oom['status']}"
        add(f"OOM fallback `{r['preset']}` {r['box']}³",
            f"batch {r['batch_asked']} → {r['final_batch']}", r["subtomograms_per_s"], note=note)
    errors = [f"- {k}: {v['status']}" for k, v in results.items()
              if v.get("status", "ok").startswith("error")]
    if errors:
        lines += ["", "Stages that failed:", *errors]
    picker = results.get("picker", {})
    if picker:
        lines += ["", "Pick by example, speed (`bench_picker_speed.measure`; one tomogram):", ""]
        if not picker.get("rows"):
            lines.append(f"picker: {picker.get('status', 'not run')}")
        for r in picker.get("rows", []):
            shape = "x".join(map(str, r["shape_zyx"]))
            lines += ["| measurement | time per tomogram | rate | note |", "|---|---|---|---|"]
            for d in r["dense"]:
                lines.append(f"| dense picker {shape} | {fmt_duration(d['seconds'])} | "
                             f"{fmt(d['voxels_per_s'] / 1e6)} M voxels/s | {d['path']} |")
            sw = r["sliding_window"]
            lines.append(
                f"| TomoTwin-style sliding window {shape} | "
                f"{fmt_duration(sw['extrapolated_total_s'])} (extrapolated) | "
                f"{fmt(sw['windows_per_s'])} boxes/s | box {sw['box']}, stride {sw['stride']}, "
                f"{sw['windows_total']:,} boxes; {sw['windows_timed']} timed, batch {sw['batch']} |"
            )
            lines.append(f"| ratio | **{r['ratio_sliding_over_dense']:,.0f}x** | | sliding "
                         f"window / {r['ratio_against']} |")
    sweep = results.get("inference", {}).get("sweep") or []
    if sweep:
        lines += ["", "Inference sweep (model alone, in-memory tensors on the device):", "",
                  "| preset | batch | channels_last_3d | subtomograms/s | peak memory GiB |",
                  "|---|---|---|---|---|"]
        for r in sweep:
            lines.append(
                f"| {r['preset']} | {r['batch']} | {'on' if r['channels_last'] else 'off'} | "
                f"{fmt(r.get('subtomograms_per_s')) if 'error' not in r else r['error'][:60]} | "
                f"{fmt(r.get('peak_memory_gib'))} |"
            )
    return "\n".join(lines) + "\n"


def write_outputs(ctx: Context) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "gpu_check.json").write_text(json.dumps(ctx.results, indent=2, default=str))
    (ctx.out / "gpu_check.md").write_text(markdown(ctx.results))


# --------------------------------------------------------------------------- main


def run_stage(ctx: Context, name: str, budget: float, total_deadline: float) -> None:
    start = time.monotonic()
    budget = min(budget, total_deadline - start)
    entry: dict = {"budget_s": round(budget, 1)}
    if budget <= 1:
        entry.update(status="skipped: out of total time", rows=[])
        ctx.results[name] = entry
        return
    ctx.deadline = start + budget
    print(f"[{name}] budget {budget:.0f} s", flush=True)
    try:
        out = STAGE_FUNCTIONS[name](ctx)
        entry.update(out)
        entry.setdefault("status", "ok")
    except Exception as exc:
        entry.update(
            status=f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            traceback=traceback.format_exc()[-3000:],
        )
        entry.setdefault("rows", [])
        print(f"[{name}] {entry['status']}", flush=True)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.empty_cache()
        except Exception:
            pass
    entry["seconds"] = round(time.monotonic() - start, 2)
    if entry["seconds"] > budget + 5:
        entry["over_budget"] = True
    ctx.results[name] = entry
    print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu",
                        help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="total time budget (default 420 s on a GPU, 120 s dry run); the "
                        "process is stopped 60 s after it, whatever is running")
    parser.add_argument("--stages", nargs="+",
                        choices=[s[0] for s in STAGES + GPU_DEFAULT_STAGES], default=None,
                        help="run only these stages (env and peak always run; picker runs "
                        "by default on a GPU only)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    if dry:
        torch.set_num_threads(1)  # a shared CI machine: one thread is fastest (docs/training.md)
    from napari_cryossl.nn.devices import select_device

    device = torch.device("cpu") if dry else select_device("cuda")
    budget = args.budget_s or (120.0 if dry else 420.0)
    # A hung kernel or process must not hold the machine: dump the stacks and stop.
    faulthandler.dump_traceback_later(budget + 60, exit=True)
    total_deadline = time.monotonic() + budget
    default = [s[0] for s in STAGES + (() if dry else GPU_DEFAULT_STAGES)]
    wanted = set(args.stages or default) | {"env", "peak"}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.work) as tmp:
            ctx = Context(device=device, dry=dry, sizes=Sizes.dry() if dry else Sizes.gpu(),
                          out=args.out, work=Path(tmp))
            t0 = time.monotonic()
            for name, gpu_budget, dry_budget in STAGES + GPU_DEFAULT_STAGES:
                if name in wanted:
                    run_stage(ctx, name, dry_budget if dry else gpu_budget, total_deadline)
                    write_outputs(ctx)
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(f"done in {time.monotonic() - t0:.0f} s: {ctx.out / 'gpu_check.json'}, "
          f"{ctx.out / 'gpu_check.md'}", flush=True)
    print(markdown(ctx.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
