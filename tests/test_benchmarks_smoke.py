"""Tiny runs proving the benchmark scripts still work (figures come from full runs)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_reproduce_paper_smoke_writes_results_table_and_plot_and_resumes(tmp_path):
    repro = _load("reproduce_paper")
    out = tmp_path / "smoke"
    assert (
        repro.main(
            [
                "--config",
                "smoke",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--methods",
                "random",
                "moco",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    finetunes = [r for r in rows if r["stage"] == "finetune"]
    assert {r["method"] for r in finetunes} == {"random", "moco"}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in finetunes)
    table = (out / "table.md").read_text()
    assert "| moco |" in table
    # every table holds the floor and the ceiling measured on the same data
    assert "| floor (radial features" in table and "| ceiling (template matching" in table
    baselines = {r["method"] for r in rows if r["stage"] in ("floor", "ceiling")}
    assert baselines == {"floor", "ceiling"}
    assert list(out.glob("accuracy_vs_labels_snr*.png"))
    assert list(out.glob("gradcam_snr*.png"))  # random init vs pretrained, as the paper's Fig. 8
    # a second start finds every run done and adds nothing
    repro.main(
        ["--config", "smoke", "--out", str(out), "--device", "cpu", "--methods", "random", "moco"]
    )
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)


def test_reproduce_paper_processes_splitting_the_methods_share_one_table_and_figure(tmp_path):
    """Random init and MoCo run by two invocations into one folder (as two CPU processes
    would): the second one's table and Grad-CAM figure cover both."""
    repro = _load("reproduce_paper")
    out = tmp_path / "split"
    common = ["--config", "smoke", "--out", str(out), "--device", "cpu"]
    assert repro.main([*common, "--methods", "random"]) == 0
    assert not list(out.glob("gradcam_snr*.png"))  # nothing to compare yet
    assert repro.main([*common, "--methods", "moco"]) == 0
    table = (out / "table.md").read_text()
    assert "| random |" in table and "| moco |" in table
    assert list(out.glob("gradcam_snr*.png"))
    assert json.loads((out / "config.json").read_text())["methods"] == ["random", "moco"]


def test_reproduce_paper_keeps_other_fine_tuning_settings_out_of_a_results_folder(tmp_path):
    """Rows fine-tuned with another learning rate or head start would corrupt the table:
    the script refuses the folder; a new folder runs the LP-FT variant."""
    repro = _load("reproduce_paper")
    common = ["--config", "smoke", "--device", "cpu", "--methods", "random", "moco"]
    assert repro.main([*common, "--out", str(tmp_path / "paper")]) == 0
    with pytest.raises(SystemExit, match="another experiment.*head_init 'random' -> 'probe'"):
        repro.main([*common, "--out", str(tmp_path / "paper"), "--head-init", "probe"])
    lpft = tmp_path / "lpft"
    assert repro.main([*common, "--out", str(lpft), "--head-init", "probe"]) == 0
    assert json.loads((lpft / "config.json").read_text())["head_init"] == "probe"
    assert "| moco |" in (lpft / "table.md").read_text()


def test_split_is_stratified_60_20_20():
    import numpy as np

    repro = _load("reproduce_paper")
    labels = np.repeat(np.arange(1, 11), 50)
    train, val, test = repro.split_indices(labels, seed=0)
    assert len(train) == 300 and len(val) == 100 and len(test) == 100
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    for part, n in ((train, 30), (val, 10), (test, 10)):
        assert np.all(np.bincount(labels[part])[1:] == n)


def test_linear_probe_benchmark_smoke_writes_curve_and_plot(tmp_path):
    bench = _load("bench_linear_probe")
    out = tmp_path / "probe"
    args = ["--seeds", "0", "--epochs", "2", "--every", "1", "--unlabelled-per-class", "6"]
    assert bench.main([*args, "--out", str(out)]) == 0
    record = json.loads((out / "probe.json").read_text())
    (run,) = record["runs"]
    assert set(run["probe"]) == {"0", "1", "2"}  # the random start, then every epoch
    assert run["steps_per_epoch"] == 1  # 18 particles, batch 16, the partial batch dropped
    assert all(0.0 <= a <= 1.0 for a in run["probe"].values())
    assert (out / "probe.png").stat().st_size > 0


def test_linear_probe_benchmark_on_the_paper_data_probes_ten_classes(tmp_path):
    bench = _load("bench_linear_probe")
    out = tmp_path / "probe_paper"
    args = ["--data", "paper", "--per-class", "10", "--seeds", "0", "--epochs", "1"]
    options = ["--queue", "32", "--augment", "affine_p=1", "crop_p=0"]
    assert bench.main([*args, *options, "--out", str(out)]) == 0
    record = json.loads((out / "probe.json").read_text())
    assert record["settings"]["queue"] == 32
    assert bench.augment_options(record["settings"]["augment"]) == {"affine_p": 1, "crop_p": 0}
    (run,) = record["runs"]
    assert run["steps_per_epoch"] == 3  # 60 training subtomograms (60 %), batch 16
    assert set(run["probe"]) == {"0", "1"}
    # several finished runs in one plot
    assert bench.main(["--overlay", str(out), str(out), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "overlay.png").stat().st_size > 0


def test_bench_extract_smoke_measures_mrc_and_its_ome_zarr_copy(tmp_path, capsys):
    pytest.importorskip("zarr")
    bench = _load("bench_extract")
    argv = ["--size-gb", "0.004", "--depth", "16", "--particles", "20", "--box", "8"]
    argv += ["--pick", "--format", "both", "--zarr-chunks", "16", "--dir", str(tmp_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| mrc |" in out and "| zarr |" in out
    counts = re.findall(r"(\w+) picking \(d=.*?, (\d+) picks", out)
    assert [fmt for fmt, _ in counts] == ["mrc", "zarr"]
    assert counts[0][1] == counts[1][1]  # the same picks from both formats
    assert not list(tmp_path.iterdir())  # the temporary files are removed
