"""The `cryossl` command line: the contract for batch users and scripts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile

from napari_cryossl.cli import main
from napari_cryossl.io import read_particles


def test_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("simulate", "pick", "pretrain", "finetune", "predict", "gradcam", "demo"):
        assert command in text


@pytest.mark.parametrize(
    "content",
    [b"", b"not an mrc file at all" * 3, b"\x00" * 1100],
    ids=["empty", "text", "zeros"],
)
def test_bad_tomogram_is_one_line_exit_2(tmp_path, capsys, content):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(content)
    code = main(["pick", str(bad), "--diameter-px", "8", "--out", str(tmp_path / "p.star")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "broken.mrc" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.star").exists()


def test_empty_star_is_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.star"
    empty.write_text("")
    code = main(["pretrain", str(empty), "--out", str(tmp_path / "enc.pt"), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "empty.star" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "enc.pt").exists()


def test_bad_input_exit_code_from_a_real_process(tmp_path):
    """The installed entry point, as a shell script would see it."""
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_cryossl",
            "pick",
            str(bad),
            "--diameter-px",
            "8",
            "--out",
            str(tmp_path / "p.star"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "broken.mrc" in proc.stderr


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sim")
    code = main(
        [
            "simulate",
            "--out",
            str(out),
            "--classes",
            "3",
            "--per-class",
            "8",
            "--box-size",
            "16",
            "--snr",
            "1.0",
            "--tomogram-shape",
            "32",
            "96",
            "96",
            "--tomogram-particles",
            "12",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    return {
        "particles": out / "particles.star",
        "tomogram": out / "tomogram.mrc",
        "tomogram_particles": out / "tomogram_particles.star",
    }


def test_simulate_writes_readable_ground_truth(simulated):
    table = read_particles(simulated["particles"])
    assert len(table) == 24
    assert sorted(np.unique(table["class_number"])) == [1, 2, 3]
    assert all(Path(p).exists() for p in table["image_name"])
    tomo_table = read_particles(simulated["tomogram_particles"])
    assert len(tomo_table) == 12


def test_pick_finds_the_simulated_particles(simulated, tmp_path, capsys):
    out = tmp_path / "picks.star"
    code = main(["pick", str(simulated["tomogram"]), "--diameter", "150", "--out", str(out)])
    assert code == 0
    picks = read_particles(out)
    assert len(picks) >= 10
    assert "picked" in capsys.readouterr().out


def test_picks_written_elsewhere_still_find_their_tomogram(simulated, tmp_path, monkeypatch):
    """The STAR records the tomogram relative to itself: the next command works from any
    folder, with the STAR anywhere."""
    out = tmp_path / "project" / "picks" / "picks.star"
    out.parent.mkdir(parents=True)
    assert main(["pick", str(simulated["tomogram"]), "--diameter", "150", "--out", str(out)]) == 0
    name = read_particles(out)["tomo_name"].iloc[0]
    assert name.endswith("tomogram.mrc") and not Path(name).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from napari_cryossl.particles.dataset import SubtomogramSet

    data = SubtomogramSet.from_star(out, box_size=16)
    assert len(data) == len(read_particles(out)) and data.load([0]).shape == (1, 16, 16, 16)


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--diameter-px", "5000"], "does not fit"),
        (["--diameter", "150", "--threshold", "1000"], "lower --threshold"),
        (["--diameter-px", "5", "--threshold", "0", "--min-distance", "1"], "raise --threshold"),
    ],
)
def test_picking_says_what_to_change_when_it_finds_nothing_or_far_too_much(
    simulated, tmp_path, capsys, argv, hint
):
    out = tmp_path / "picks.star"
    assert main(["pick", str(simulated["tomogram"]), *argv, "--out", str(out)]) == 0
    assert hint in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_finetune_predict_gradcam_end_to_end(simulated, tmp_path):
    """The batch contract: each command consumes the previous one's output."""
    particles = simulated["particles"]
    encoder = tmp_path / "encoder.pt"
    classifier = tmp_path / "classifier.pt"
    predictions = tmp_path / "predictions.star"
    common = ["--preset", "rb3d-small", "--device", "cpu", "--batch-size", "8"]
    assert (
        main(
            [
                "pretrain",
                str(particles),
                "--method",
                "simclr",
                "--out",
                str(encoder),
                "--epochs",
                "1",
                *common,
            ]
        )
        == 0
    )
    assert encoder.exists()
    assert (
        main(
            [
                "finetune",
                str(particles),
                "--init",
                str(encoder),
                "--out",
                str(classifier),
                "--epochs",
                "2",
                "--min-steps",
                "0",
                *common,
            ]
        )
        == 0
    )
    assert classifier.exists()
    assert (
        main(
            [
                "predict",
                str(classifier),
                str(particles),
                "--out",
                str(predictions),
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    source = starfile.read(particles)
    result = starfile.read(predictions)
    source = source["particles"] if isinstance(source, dict) else source
    result = result["particles"] if isinstance(result, dict) else result
    # same rows, same order, every input column kept, class and probability set
    assert list(result["rlnImageName"]) == list(source["rlnImageName"])
    assert set(source.columns) <= set(result.columns)
    assert set(np.unique(result["rlnClassNumber"])) <= {1, 2, 3}
    prob = result["rlnMaxValueProbDistribution"].to_numpy()
    assert np.all((prob >= 1 / 3 - 1e-6) & (prob <= 1))

    heat_dir = tmp_path / "heat"
    assert (
        main(
            ["gradcam", str(classifier), str(particles), "--out", str(heat_dir), "--device", "cpu"]
        )
        == 0
    )
    maps = sorted(heat_dir.glob("*.mrc"))
    assert len(maps) == len(source)

    # the population: every row with its map coordinates and cluster, vectors beside it
    embedded = tmp_path / "embedded.star"
    for model in (encoder, classifier):
        assert main(["embed", str(model), str(particles), "--out", str(embedded),
                     "--clusters", "3", "--device", "cpu", "--overwrite"]) == 0
        table = starfile.read(embedded)
        table = table["particles"] if isinstance(table, dict) else table
        assert list(table["rlnImageName"]) == list(source["rlnImageName"])
        assert set(source.columns) <= set(table.columns)
        assert np.isfinite(table[["cryosslMapX", "cryosslMapY"]].to_numpy(float)).all()
        assert set(table["cryosslCluster"]) <= {1, 2, 3}
        vectors = np.load(embedded.with_suffix(".npy"))
        assert vectors.shape[0] == len(source) and vectors.ndim == 2

    # what to label next: unlabelled rows only, at most --n
    partly = particles.parent / f"partly_{tmp_path.name}.star"  # beside its subtomograms
    from napari_cryossl.io import replace_star_columns

    classes = source["rlnClassNumber"].to_numpy().copy()
    classes[3:] = 0  # three labels left
    replace_star_columns(particles, partly, {"rlnClassNumber": classes})
    nxt = tmp_path / "next.star"
    assert main(["suggest", str(classifier), str(partly), "--n", "5", "--out", str(nxt),
                 "--device", "cpu"]) == 0
    chosen = starfile.read(nxt)
    chosen = chosen["particles"] if isinstance(chosen, dict) else chosen
    assert len(chosen) == 5 and set(chosen["rlnImageName"]) <= set(source["rlnImageName"][3:])
    assert (chosen["rlnClassNumber"] == 0).all()


def test_gradcam_on_tomogram_coordinates_writes_one_volume(simulated, tmp_path):
    import mrcfile

    particles = simulated["tomogram_particles"]
    classifier = tmp_path / "classifier.pt"
    args = ["--preset", "rb3d-small", "--device", "cpu", "--box-size", "16", "--batch-size", "4"]
    assert (
        main(["finetune", str(particles), "--out", str(classifier), "--epochs", "1",
              "--min-steps", "0", *args])
        == 0
    )
    heat_dir = tmp_path / "heat"
    assert (
        main(
            [
                "gradcam",
                str(classifier),
                str(particles),
                "--out",
                str(heat_dir),
                "--device",
                "cpu",
                "--box-size",
                "16",
            ]
        )
        == 0
    )
    maps = sorted(heat_dir.glob("*.mrc"))
    assert len(maps) == 1
    with mrcfile.open(maps[0]) as heat, mrcfile.open(simulated["tomogram"]) as tomo:
        assert heat.data.shape == tomo.data.shape
        assert float(heat.voxel_size.x) == pytest.approx(float(tomo.voxel_size.x))
        assert heat.data.max() > 0


def test_finetune_refuses_a_single_class(simulated, tmp_path, capsys):
    table = starfile.read(simulated["particles"])
    table = table["particles"] if isinstance(table, dict) else table
    one = table[table["rlnClassNumber"] == 1].copy()
    one["rlnImageName"] = [
        str((simulated["particles"].parent / p).resolve()) for p in one["rlnImageName"]
    ]
    path = tmp_path / "one_class.star"
    starfile.write(one, path)
    code = main(
        [
            "finetune",
            str(path),
            "--out",
            str(tmp_path / "c.pt"),
            "--epochs",
            "1",
            "--preset",
            "rb3d-small",
        ]
    )
    assert code == 2
    assert "class" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_lines_reach_a_log_file_while_training(simulated, tmp_path):
    """A cluster job's log: output piped to a file gets plain progress lines during the
    run (step, loss, learning rate, time left), not a bar that only appears at the end."""
    import os
    import re
    import time

    log = tmp_path / "job.log"
    env = {**os.environ, "CRYOSSL_LOG_INTERVAL": "0"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "napari_cryossl", "pretrain", str(simulated["particles"]),
                "--out", str(tmp_path / "enc.pt"), "--epochs", "4", "--batch-size", "4",
                "--device", "cpu",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        seen_while_running = ""
        while proc.poll() is None:
            text = log.read_text()
            if "[pretrain moco] step" in text:
                seen_while_running = text
            time.sleep(0.2)
    assert proc.returncode == 0
    assert "[pretrain moco] step" in seen_while_running  # written during the run
    lines = [x for x in log.read_text().splitlines() if x.startswith("[pretrain moco] step")]
    assert len(lines) >= 4
    middle = next(x for x in lines if "ETA" in x)
    assert re.search(r"loss \d+\.\d{4}", middle) and re.search(r"lr \d\.\de-\d\d|lr 0\.\d+", middle)
    assert "lr 0.0000" not in middle
    final = log.read_text().strip().splitlines()[-1]
    assert final.startswith("encoder -> ") and "last loss n/a" not in final
    text = log.read_text()
    # on a CPU the run says what it chose and how long it will take, before it goes on
    assert text.startswith("CPU: rb3d-small")
    assert re.search(r"\[pretrain moco\] estimated time: (\d+h)?(\d+m)?\d+[sm] for 24 steps", text)


def test_a_finished_result_is_not_replaced_silently(simulated, tmp_path, capsys):
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"a finished encoder")
    for command in ("pretrain", "finetune"):
        code = main([command, str(simulated["particles"]), "--out", str(out), "--epochs", "1"])
        assert code == 2
        err = capsys.readouterr().err
        assert "encoder.pt exists" in err and "--overwrite" in err and "--resume" in err
    assert out.read_bytes() == b"a finished encoder"


def test_cpu_pretraining_without_epochs_fits_minutes_not_hours(capsys):
    """On a CPU the method's 200 epochs would take hours: without --epochs the CLI runs
    as many epochs as fit about CPU_PRETRAIN_STEPS steps (1 to 10), and says so."""
    from napari_cryossl.base.options import CPU_PRETRAIN_EPOCHS, CPU_PRETRAIN_STEPS
    from napari_cryossl.cli.training import _cpu_defaults
    from napari_cryossl.train import PretrainConfig

    big = _cpu_defaults(PretrainConfig(device="cpu"), 5000)  # 313 steps per epoch
    assert big.epochs == max(1, CPU_PRETRAIN_STEPS // 313)
    assert "epoch(s) of 313 steps" in capsys.readouterr().err
    assert _cpu_defaults(PretrainConfig(device="cpu"), 100).epochs == CPU_PRETRAIN_EPOCHS
    assert _cpu_defaults(PretrainConfig(device="cpu", epochs=50), 5000).epochs == 50


def test_every_torchrun_rank_takes_the_same_cpu_schedule(monkeypatch, capsys):
    """Under torchrun (RANK set) rank 1 must shorten the schedule exactly as rank 0 does,
    or the ranks would train different numbers of steps and wait for each other; only
    rank 0 prints the announcement."""
    from napari_cryossl.cli.training import _cpu_defaults
    from napari_cryossl.train import PretrainConfig

    rank0 = _cpu_defaults(PretrainConfig(device="cpu"), 5000).epochs
    capsys.readouterr()
    monkeypatch.setenv("RANK", "1")
    assert _cpu_defaults(PretrainConfig(device="cpu"), 5000).epochs == rank0
    assert capsys.readouterr().err == ""


def test_pick_and_gradcam_report_progress_in_a_log(simulated, tmp_path):
    """Long commands besides training also write progress lines to a log file."""
    import os

    env = {**os.environ, "CRYOSSL_LOG_INTERVAL": "0"}
    log = tmp_path / "pick.log"
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "napari_cryossl", "pick", str(simulated["tomogram"]),
             "--diameter", "150", "--out", str(tmp_path / "picks.star")],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    assert proc.returncode == 0
    text = log.read_text()
    assert "[pick] chunk " in text and "done in" in text


def test_simulate_reports_each_stage_in_a_log(tmp_path):
    """`cryossl simulate` piped to a file says what it is doing, stage by stage."""
    import os

    env = {**os.environ, "CRYOSSL_LOG_INTERVAL": "0"}
    log = tmp_path / "simulate.log"
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "napari_cryossl", "simulate", "--out", str(tmp_path / "sim"),
             "--classes", "2", "--per-class", "40", "--box-size", "16", "--voxel-size", "20",
             "--tomogram-shape", "32", "64", "64", "--tomogram-particles", "5"],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    for stage, unit in (("simulate", "chunk"), ("write", "file"), ("tomogram", "tomogram")):
        assert f"[simulate: {stage}] {unit} " in text
    assert re.search(r"\[simulate: write\] file 80/80 \(100 %\).* done in", text)
    assert len(list((tmp_path / "sim" / "subtomograms").glob("*.mrc"))) == 80


@pytest.mark.slow
def test_ctrl_c_keeps_the_classifier_already_at_out(simulated, tmp_path):
    """Even with --overwrite (replace it when done), Ctrl-C mid-run leaves the finished
    classifier at --out byte for byte, and says where the run so far is and how to go on."""
    import os
    import signal
    import time

    from napari_cryossl.nn.checkpoints import load_checkpoint
    from napari_cryossl.train import last_checkpoint_path

    out = tmp_path / "classifier.pt"
    base = [str(simulated["particles"]), "--out", str(out), "--device", "cpu",
            "--batch-size", "4"]
    assert main(["finetune", *base, "--epochs", "1"]) == 0
    before = out.read_bytes()
    env = dict(os.environ, CRYOSSL_LOG_INTERVAL="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_cryossl", "finetune", *base, "--epochs", "500",
         "--overwrite"],
        stderr=subprocess.PIPE, text=True, env=env,
        # a suite started in the background inherits SIGINT ignored, and Python then
        # installs no Ctrl-C handler: give the child the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # wait until training has taken a few steps
        lines.append(line)
        if line.startswith("[finetune] step") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert out.read_bytes() == before
    state = last_checkpoint_path(out)
    assert load_checkpoint(state, kind="classifier")["progress"]["global_step"] >= 1
    assert str(state) in rest and "--resume" in rest and "was not touched" in rest


def test_finetune_centres_particles_unless_told_not_to_and_gradcam_uses_it(
    simulated, tmp_path
):
    from napari_cryossl.nn.checkpoints import load_checkpoint

    classifier = tmp_path / "classifier.pt"
    argv = ["finetune", str(simulated["particles"]), "--epochs", "1", "--min-steps", "0",
            "--batch-size", "8", "--device", "cpu"]
    plain = tmp_path / "plain.pt"
    assert main([*argv, "--out", str(plain), "--no-centre-particles"]) == 0
    assert load_checkpoint(plain)["architecture"]["centring"] == 0
    assert main([*argv, "--out", str(classifier)]) == 0
    state = load_checkpoint(classifier)
    assert state["architecture"]["centring"] == 10
    assert bool(state["model"]["encoder.input.centring.fitted"])
    assert state["config"]["centre_particles"] is True
    heat = tmp_path / "heat"
    assert main(["gradcam", str(classifier), str(simulated["particles"]), "--out", str(heat),
                 "--device", "cpu"]) == 0
    assert sorted(heat.glob("*.mrc"))
