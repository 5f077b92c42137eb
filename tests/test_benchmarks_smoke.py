"""Tiny runs proving the benchmark scripts still work (figures come from full runs)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
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


GPU_CHECK_STAGES = ["env", "peak", "inference", "pretrain", "finetune", "predict", "oom", "ddp"]


def test_gpu_check_dry_run_writes_every_row_on_the_cpu(tmp_path):
    """The GPU check's CPU dry run (what CI can run): every stage, tiny sizes, in a
    subprocess as it is launched for real; every row has numbers, or for DDP and the
    out-of-memory fallback an explicit "skipped: no GPU"."""
    out = tmp_path / "gpu"
    src = str(BENCH.parent / "src")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
        CUDA_VISIBLE_DEVICES="",
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 180
    results = json.loads((out / "gpu_check.json").read_text())
    assert list(results) == GPU_CHECK_STAGES
    for stage in GPU_CHECK_STAGES[:6]:
        assert results[stage]["status"] == "ok", (stage, results[stage])
        assert results[stage]["rows"], stage
        assert not any("error" in row for row in results[stage]["rows"]), results[stage]

    env_row = results["env"]["rows"][0]
    assert env_row["dry_run"] is True and env_row["device"].startswith("CPU")
    assert env_row["torch"] and env_row["date"]
    assert results["peak"]["rows"][0]["matmul_tflops"] > 0
    (infer,) = results["inference"]["rows"]  # rb3d-small only in the dry run
    assert infer["preset"] == "rb3d-small" and infer["box"] == 16
    assert infer["subtomograms_per_s"] > 0 and infer["tflops"] > 0
    assert infer["fraction_of_peak"] > 0 and infer["seconds_per_million"] > 0
    assert infer["batch"] in infer["batches_tried"]
    assert {(r["batch"], r["channels_last"]) for r in results["inference"]["sweep"]} == {
        (b, cl) for b in infer["batches_tried"] for cl in (True, False)
    }
    for stage in ("pretrain", "finetune"):
        (row,) = results[stage]["rows"]
        assert row["steps_per_s"] > 0 and math.isfinite(row["last_loss"])
    (pred,) = results["predict"]["rows"]
    assert pred["e2e_subtomograms_per_s"] > 0 and pred["model_subtomograms_per_s"] > 0
    assert pred["ratio"] == pytest.approx(
        pred["e2e_subtomograms_per_s"] / pred["model_subtomograms_per_s"]
    )

    # no GPU: the two GPU-only rows say so, and still ran what the CPU can run
    for stage in ("oom", "ddp"):
        assert results[stage]["status"].startswith("skipped: no GPU"), results[stage]
    (oom,) = results["oom"]["rows"]
    assert oom["finished"] and oom["rows_returned"] == oom["n"]
    assert oom["batch_sizes_tried"] == [8, 4, 2] and oom["final_batch"] == 2
    (ddp,) = results["ddp"]["rows"]  # the one-process CLI run the N-GPU run is held against
    assert ddp["processes"] == 1 and ddp["steps_per_s"] > 0, ddp

    table = (out / "gpu_check.md").read_text()
    for label in ("inference `rb3d-small`", "MoCo pretraining step", "fine-tuning step",
                  "`predict` end to end", "DDP pretraining", "OOM fallback"):
        assert label in table
    assert "CPU dry run" in table


@pytest.mark.usefixtures("one_torch_thread")  # the dry run sets one thread; restored after
def test_gpu_check_keeps_the_other_rows_when_a_stage_fails(tmp_path, monkeypatch):
    gpu_check = _load("gpu_check")

    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu_check.STAGE_FUNCTIONS, "inference", broken)
    out = tmp_path / "gpu"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--stages", "inference", "oom"]) == 0
    results = json.loads((out / "gpu_check.json").read_text())
    assert list(results) == ["env", "peak", "inference", "oom"]
    assert results["inference"]["status"].startswith("error: RuntimeError: CUDA error")
    assert "Traceback" in results["inference"]["traceback"]
    assert results["oom"]["rows"][0]["finished"]
    table = (out / "gpu_check.md").read_text()
    assert "error: RuntimeError" in table and "OOM fallback" in table


def test_gpu_check_reads_the_step_rate_of_a_torchrun_log():
    gpu_check = _load("gpu_check")
    # two ranks' lines, one of them run together on one line, as torchrun prints them
    log = (
        "[pretrain moco] step 3/4 (75 %) epoch 1/1 loss 2.1 lr 1.0e-03 8.50 steps/s ETA 0s"
        "[pretrain moco] step 3/4 (75 %) epoch 1/1 loss 2.2 lr 1.0e-03 8.40 steps/s ETA 0s\n"
        "[pretrain moco] step 4/4 (100 %) epoch 1/1 loss 2.0 lr 1.0e-03 9.00 steps/s done in 1s\n"
        "[pretrain moco] step 4/4 (100 %) epoch 1/1 loss 2.0 lr 1.0e-03 9.20 steps/s done in 1s\n"
        "[pretrain moco] step 4/4 (100 %) epoch 1/1 loss 2.0 train_loss 2.0 5.00 steps/s done\n"
    )
    assert gpu_check.parse_step_rate(log) == pytest.approx(9.1)  # the epoch line (save) left out
    assert gpu_check.arrival_rate({1: 10.0, 2: 10.5, 5: 11.5}, warmup=2) == pytest.approx(3.0)
    assert gpu_check.arrival_rate({1: 10.0}, warmup=2) is None
    cmd = gpu_check.ddp_command(4, Path("p.star"), Path("t.mrc"), Path("e.pt"),
                                preset="rb3d-small", box=32, batch=256, device="cuda")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:8] == ["-m", "napari_cryossl", "pretrain"] and "--batch-size" in cmd
    assert gpu_check.ddp_command(1, Path("p"), Path("t"), Path("e"), preset="rb3d", box=32,
                                 batch=64, device="cuda")[1:4] == ["-m", "napari_cryossl", "pretrain"]


@pytest.mark.usefixtures("one_torch_thread")
def test_peer_benchmark_times_ours_and_says_when_tomotwin_is_missing(tmp_path, monkeypatch):
    bench = _load("bench_peer")
    monkeypatch.setitem(sys.modules, "tomotwin", None)  # as on CI: not installed
    out = tmp_path / "peer"
    args = ["--models", "rb3d-small", "tomotwin", "--rounds", "2", "--round-s", "0.01"]
    assert bench.main([*args, "--batch", "2", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "peer.json").read_text())
    assert "TomoTwin could not be imported" in record["peer_missing"]
    (row,) = record["rows"]
    assert row["network"] == "rb3d-small" and row["box"] == 32
    assert len(row["subtomograms_per_s"]) == 2 and min(row["subtomograms_per_s"]) > 0
    assert row["gflop_per_subtomogram"] > 0 and row["ratio_to_peer_gflops"] == []
    assert "| rb3d-small (32³) |" in (out / "peer.md").read_text()


def _has_revision(rev: str) -> bool:
    root = BENCH.parent
    probe = subprocess.run(
        ["git", "-C", str(root), "cat-file", "-e", f"{rev}:src/napari_cryossl/models.py"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_speedup_benchmark_times_the_old_and_the_new_networks_on_the_same_work(tmp_path, capsys):
    speedup = _load("bench_speedup")
    if not _has_revision(speedup.BASELINE):
        pytest.skip(f"this checkout lacks the baseline commit {speedup.BASELINE} (shallow clone)")
    out = tmp_path / "speedup.json"
    argv = ["--box", "16", "--infer-batch", "2", "--train-batch", "4", "--rounds", "1"]
    assert speedup.main([*argv, "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["case"].split(",")[0] for r in result["rows"]] == [
        "inference", "fine-tuning step", "MoCo pretraining step"
    ]
    assert all(r["old_s"] > 0 and r["new_s"] > 0 and r["speedup"] > 0 for r in result["rows"])
    assert "| inference, batch 2 |" in capsys.readouterr().out


def test_profile_script_prints_the_operators_of_each_case(capsys):
    profile = _load("profile_networks")
    argv = ["--box", "16", "--batch", "2", "--repeats", "1", "--top", "3", "--threads", "1"]
    assert profile.main(argv) == 0
    text = capsys.readouterr().out
    for case in ("inference", "finetune", "moco"):
        assert f"\n{case}: " in text
    assert "convolution" in text  # a 3D CNN spends its time in convolutions


def test_suggest_benchmark_reports_the_labels_needed_at_every_random_budget(tmp_path, capsys):
    import torch

    from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint
    from napari_cryossl.nn.models import build_encoder

    torch.manual_seed(0)
    encoder = tmp_path / "encoder.pt"
    save_checkpoint(encoder, checkpoint_state(build_encoder("rb3d-small", 16), voxel_size=20.0))
    bench = _load("bench_suggest")
    out = tmp_path / "suggest"
    assert bench.main(["--encoder", str(encoder), "--structures", "apoferritin,GluA3-NTD",
                       "--per-class", "20", "--rounds", "2", "--step", "2", "--runs", "1",
                       "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "suggest.json").read_text())
    assert result["n_labels"] == [2, 4, 6]
    for strategy in ("auto", "margin", "typical"):
        needed = result["labels_to_reach_random_at_each_n"][strategy]
        assert len(needed) == 3 and all(n is None or 2 <= n <= 6 for n in needed)
        assert all(0.0 <= a <= 1.0 for a in result[strategy])
    assert "labels needed for random's accuracy" in capsys.readouterr().out
    assert (out / "suggest.png").stat().st_size > 10_000  # the accuracy-vs-labels plot
    plot = _load("plot_suggest")
    assert plot.main([str(out), str(out), "--out", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").stat().st_size > 10_000


def test_few_label_curve_summary_and_plot(tmp_path):
    """bench_few_labels --summarise turns rows of named variants into a table with Welch p
    against random weights, and plot_few_labels draws it with 'all' at the training split's
    size (real rows of the committed result, re-summarised)."""
    rows = json.loads((BENCH / "results" / "few_labels_20261207.json").read_text())["rows"]
    # a named variant (--name) with rows at one label count, as a screen writes them
    variant = [dict(r, method="moco-lpft", key=f"moco-lpft|{r['k']}|{r['seed']}")
               for r in rows if r["method"] == "random+semi" and r.get("k") == 10]
    out = tmp_path / "few.json"
    out.with_suffix(".jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows + variant))
    bench = _load("bench_few_labels")
    assert bench.main(["--out", str(out), "--summarise"]) == 0
    result = json.loads(out.read_text())
    assert {t["method"] for t in result["table"]} >= {"floor", "random", "moco-lpft"}
    test = next(t for t in result["welch_against_random"] if t["a"] == "moco-lpft")
    assert test["k"] == 10 and test["n"] == [3, 3] and 0.0 <= test["p"] <= 1.0
    assert "| all (36) |" in result["markdown"]
    plot = _load("plot_few_labels")
    assert plot.main([str(out), str(out), "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 10_000


@pytest.mark.slow
def test_centring_precision_benchmark_scores_offsets_against_the_simulators(tmp_path, capsys):
    """bench_centring: the simulator's own offsets have no error and centre_offsets brings
    the boxes closer to them than leaving the particles where they are."""
    out = tmp_path / "centring.json"
    bench = _load("bench_centring")
    assert bench.main(["--out", str(out), "--per-class", "10", "--labels", "3",
                       "--variants", '{"iterations": 1}']) == 0
    rows = {r["offsets"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["simulator's offsets"]["error_median"] == 0.0
    assert rows["centre_offsets (defaults)"]["error_median"] < rows["none"]["error_median"]
    assert 'centre_offsets {"iterations": 1}' in rows
    assert all(len(r["floor_few"]) == 5 and 0.0 <= r["floor_all"] <= 1.0 for r in rows.values())
    assert "| none |" in capsys.readouterr().out


def test_scattering_invariants_ignore_rotation_and_translation_of_the_particle():
    """bench_invariant_features: the solid-harmonic scattering of a particle is the same
    after a 90° rotation and a shift of the box, and differs between two shapes."""
    bench = _load("bench_invariant_features")
    rng = np.random.default_rng(0)
    b = 24
    g = np.arange(b) - b // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    rod = ((np.abs(z) < 6) & (y**2 + x**2 < 6)).astype(np.float32)
    blob = (z**2 + y**2 + x**2 < 20).astype(np.float32)
    turned = np.rot90(rod, 1, axes=(0, 1))
    moved = np.roll(rod, (2, -3, 1), axis=(0, 1, 2))
    noise = 0.01 * rng.standard_normal((4, b, b, b)).astype(np.float32)
    boxes = np.stack([rod, turned, moved, blob]) + noise
    feats = bench.scattering(boxes, J=2, L=4, sigma0=1.0, mask_radius=1e3)
    same = np.abs(feats[1:3] - feats[0]).max()
    other = np.abs(feats[3] - feats[0]).max()
    assert same < 0.05 and other > 10 * same


@pytest.mark.slow
def test_invariant_features_benchmark_writes_every_row_beside_the_floor(tmp_path):
    """bench_invariant_features: floor, scattering with and without centring, the network,
    their product (with its paired difference) and the binned network, in one JSON."""
    out = tmp_path / "invariant.json"
    bench = _load("bench_invariant_features")
    assert bench.main(["--out", str(out), "--per-class", "10", "--labels", "3", "--seeds", "0",
                       "1", "--settings", "[2, 2, 2.0, 12]", "--network", "--steps", "10",
                       "--binned", "10"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        "floor", "scattering J2 L2 sigma2 R12", "scattering J2 L2 sigma2 R12+centring",
        "network", "network x scattering J2 L2 sigma2 R12",
        "network x scattering J2 L2 sigma2 R12+centring", "network, binned by 2, 10 steps",
    }
    assert all(len(r["test_accuracy"]) == 2 for r in rows.values())
    product = rows["network x scattering J2 L2 sigma2 R12"]
    assert product["minus_network"] == pytest.approx(
        product["mean"] - rows["network"]["mean"])
    assert not list(tmp_path.glob("*.pt"))
