"""Estimated vs actual time: is the time left that `cryossl` prints true?

Runs `cryossl pretrain`, `cryossl finetune` (both as a user would, default CPU schedules
unless --quick) and `cryossl demo` in this process with their progress going to a log
(one line a second), time-stamps every line, and compares, for each training stage, the
total the line printed once a tenth of the stage is done predicts (time so far + its
ETA) with the time the stage really took. The demo's total is predicted the same way
at the moment its fine-tuning has done a tenth: the time so far plus that stage's ETA;
its last two stages (predict, Grad-CAM) print no estimate and are added as they came.
The machine's load average is recorded before and after: estimates on a shared machine
move with its load.

    python benchmarks/bench_estimates.py --out benchmarks/results/estimates_YYYYMMDD
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] step (?P<step>\d+)/(?P<n>\d+) .*?(ETA (?P<eta>\S+)|done in (?P<done>\S+))")


def _seconds(text: str) -> float:
    """'42s', '7m07s', '2h05m' -> seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not m or text == "?":
        return float("nan")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return 3600 * h + 60 * mi + s


class StampedLines(io.TextIOBase):
    """A text stream that keeps every line with the time it was written."""

    def __init__(self, echo=None) -> None:
        self.lines: list[tuple[float, str]] = []
        self._part = ""
        self._echo = echo

    def write(self, text: str) -> int:
        if self._echo is not None:
            self._echo.write(text)
        self._part += text
        while "\n" in self._part:
            line, self._part = self._part.split("\n", 1)
            self.lines.append((time.perf_counter(), line))
        return len(text)

    def isatty(self) -> bool:
        return False


def stage_estimates(lines, t0: float) -> dict[str, dict]:
    """For each stage: the total predicted at >= 10 % done, and the actual time."""
    out: dict[str, dict] = {}
    for t, line in lines:
        m = LINE.match(line)
        if not m:
            continue
        desc, step, n = m["desc"], int(m["step"]), int(m["n"])
        rec = out.setdefault(desc, {"start": None, "n_steps": n})
        if rec["start"] is None:
            rec["start"] = t  # the first line of the stage (after its first step)
        if m["eta"] and "predicted_s" not in rec and step >= 0.1 * n:
            rec["at_fraction"] = step / n
            rec["predicted_s"] = (t - t0) + _seconds(m["eta"])
            rec["predicted_at_s"] = t - t0
        if m["done"]:
            rec["actual_s"] = t - t0
    for rec in out.values():
        rec.pop("start", None)
        if "predicted_s" in rec and "actual_s" in rec:
            rec["error"] = rec["predicted_s"] / rec["actual_s"] - 1
    return out


def timed_command(argv: list[str], echo: bool, log: Path | None = None) -> tuple[dict, float]:
    """Run one `cryossl` command; its stage estimates and wall time (its output to ``log``)."""
    from napari_cryossl.cli import main

    stream = StampedLines(sys.stderr if echo else None)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):
        code = main(argv)
    if log is not None:
        log.write_text("".join(f"{t - t0:8.1f}s  {line}\n" for t, line in stream.lines))
    if code != 0:
        raise SystemExit(f"cryossl {' '.join(argv)} failed ({code})")
    return stage_estimates(stream.lines, t0), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny runs (a smoke test)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--echo", action="store_true", help="show the commands' output")
    args = parser.parse_args(argv)
    os.environ["CRYOSSL_LOG_INTERVAL"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_count": os.cpu_count(),
        "load_before": os.getloadavg(),
        "runs": {},
    }
    sim = args.out / "sim"
    from napari_cryossl.cli import main as cryossl

    if not sim.exists():
        cryossl(["simulate", "--out", str(sim), "--structures", "TRiC", "apoferritin", "RuvAB",
                 "GluA3-NTD",
                 "--per-class", "20" if args.quick else "100", "--box-size", "16",
                 "--voxel-size", "20", "--snr", "0.5"])
    particles = str(sim / "particles.star")
    enc, clf = args.out / "encoder.pt", args.out / "classifier.pt"
    pretrain = ["pretrain", particles, "--out", str(enc), "--overwrite", "--device", "cpu"]
    finetune = ["finetune", particles, "--init", str(enc), "--out", str(clf), "--overwrite",
                "--device", "cpu", "--label-fraction", "0.25"]
    if args.quick:
        pretrain += ["--epochs", "2", "--batch-size", "8"]
        finetune += ["--epochs", "2", "--batch-size", "8"]
    for name, command in (("pretrain", pretrain), ("finetune", finetune)):
        stages, total = timed_command(command, args.echo, args.out / f"{name}.log")
        record["runs"][name] = {"command": "cryossl " + " ".join(command[0:1] + command[2:]),
                                "stages": stages, "wall_s": total}
        print(name, json.dumps(stages), flush=True)
    if not args.skip_demo:
        demo = ["demo", "--out", str(args.out / "demo"), "--overwrite", "--device", "cpu"]
        stages, total = timed_command(demo, args.echo, args.out / "demo.log")
        fine = stages.get("finetune", {})
        record["runs"]["demo"] = {"command": "cryossl demo", "stages": stages, "wall_s": total}
        if "predicted_s" in fine:
            # The demo's last two stages (predict, Grad-CAM) print no estimate; they are
            # added as they came, and reported apart, so the figure is the training's.
            tail = total - fine["actual_s"]
            record["runs"]["demo"]["untimed_tail_s"] = tail
            record["runs"]["demo"]["predicted_total_s"] = fine["predicted_s"] + tail
            record["runs"]["demo"]["total_error"] = (fine["predicted_s"] + tail) / total - 1
        print("demo", json.dumps(record["runs"]["demo"]), flush=True)
    record["load_after"] = os.getloadavg()
    (args.out / "estimates.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
