"""Pick by example on the command line over several tomograms (issue 27, part 2):
`cryossl train-picker` over a RELION tomogram set, a STAR that names its tomograms or a
copick project, a second round (--init), and `cryossl pick TOMO... --model` writing the
picks of every tomogram into one STAR (rlnTomoName, rlnClassNumber,
rlnAutopickFigureOfMerit); bad input is one line, exit code 2, naming the file.

Real files (MRC, STAR, tomograms.star) written with napari_cryossl.io; two simulated
32x64x64 tomograms; a few training steps only (what is tested is the plumbing, not the
picker's quality: tests/test_learned_picker.py and benchmarks/bench_picking.py do that).
"""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from napari_cryossl.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOXEL = 10.0
NAMES = ("tomo_a", "tomo_b")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two tomograms (tomo_a.mrc, tomo_b.mrc), their tomograms.star, labelled particles
    named by the set (particles.star, rlnTomoName tomo_a/tomo_b) and by file name
    (beside.star, rlnTomoName tomo_a.mrc/tomo_b.mrc), and a first picker (r1.pt)."""
    from napari_cryossl.io import (
        RelionTomogram,
        open_tomogram,
        write_mrc,
        write_particles,
        write_tomograms_star,
    )
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    folder = tmp_path_factory.mktemp("picker_cli")
    sim = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=VOXEL, snr=1.0, particle_diameter_a=120
    )
    tables, records = [], {}
    for seed, name in enumerate(NAMES, start=1):
        vol, table = simulate_tomogram((32, 64, 64), 20, sim, seed=seed)
        path = folder / f"{name}.mrc"
        write_mrc(path, vol, VOXEL)
        records[name] = RelionTomogram.from_tomogram(open_tomogram(path), name=name)
        tables.append(table.assign(tomo_name=name))
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    write_tomograms_star(records, folder / "tomograms.star")
    write_particles(table, folder / "particles.star")
    write_particles(
        table.assign(tomo_name=table["tomo_name"] + ".mrc"), folder / "beside.star"
    )
    model = folder / "r1.pt"
    code = main([
        "train-picker", str(folder / "particles.star"), "--tomogram",
        str(folder / "tomograms.star"), "--diameter", "120", "--steps", "5", "--out", str(model),
    ])
    assert code == 0
    return {"folder": folder, "table": table, "model": model}


def _state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_picker_over_a_tomogram_set(project):
    state = _state(project["model"])
    assert state["class_numbers"] == [1, 2] and state["class_names"] == ["1", "2"]
    assert state["voxel_size"] == VOXEL and state["diameter_px"] == pytest.approx(12.0)


def test_train_picker_finds_the_tomograms_the_star_names_and_refuses_to_replace(
    project, tmp_path, capsys
):
    out = tmp_path / "p.pt"
    args = ["train-picker", str(project["folder"] / "beside.star"), "--out", str(out),
            "--diameter", "120", "--steps", "3"]
    assert main(args) == 0  # no --tomogram: rlnTomoName next to the STAR
    assert "classes 1, 2" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_a_second_round_continues_from_the_first_picker(project, tmp_path):
    from napari_cryossl.io import write_particles

    folder = project["folder"]
    table = project["table"].copy()
    table.loc[table.index[:4], "class_number"] = 3  # a class the first round did not know
    star = tmp_path / "round2.star"
    write_particles(table, star)
    out = tmp_path / "r2.pt"
    code = main([
        "train-picker", str(star), "--tomogram", str(folder / "tomograms.star"),
        "--init", str(project["model"]), "--steps", "3", "--out", str(out),
    ])
    assert code == 0
    state = _state(out)
    assert state["class_numbers"] == [1, 2, 3]
    assert state["diameter_px"] == pytest.approx(12.0)  # the first round's, no --diameter


def test_class_names_come_from_the_file(project, tmp_path):
    """A STAR with a data_classes block (rlnClassNumber, cryosslClassName: the dock's
    annotation file) names the picker's classes; classes without a label are left out."""
    from napari_cryossl.io import read_particles

    folder = project["folder"]
    table = read_particles(folder / "beside.star")
    particles = starfile.read(folder / "beside.star", always_dict=True)["particles"]
    classes = pd_frame({
        "rlnClassNumber": [1, 2, 7],
        "cryosslClassName": ["ribosome", "proteasome", "unused"],
    })
    star = folder / "named.star"  # beside the tomograms: rlnTomoName finds them
    starfile.write({"classes": classes, "particles": particles}, star)
    assert len(read_particles(star)) == len(table)
    out = tmp_path / "named.pt"
    assert main(["train-picker", str(star), "--out", str(out), "--diameter", "120",
                 "--steps", "3"]) == 0
    state = _state(out)
    assert state["class_numbers"] == [1, 2]
    assert state["class_names"] == ["ribosome", "proteasome"]


def pd_frame(columns):
    import pandas as pd

    return pd.DataFrame(columns)


def test_pick_several_tomograms_with_the_model_into_one_star(project, tmp_path, capsys):
    from napari_cryossl.particles.dataset import SubtomogramSet

    folder = project["folder"]
    out = tmp_path / "picks.star"
    tomos = [str(folder / f"{n}.mrc") for n in NAMES]
    args = ["pick", *tomos, "--model", str(project["model"]), "--threshold", "0",
            "--max-particles", "30", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 tomograms" in text
    frame = starfile.read(out)
    for label in ("rlnTomoName", "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnCoordinateX"):
        assert label in frame.columns, label
    assert set(frame["rlnTomoName"]) <= {f"../{folder.name}/{n}.mrc" for n in NAMES}
    assert frame["rlnTomoName"].nunique() == 2  # threshold 0: picks in both
    assert set(frame["rlnClassNumber"]) <= {1, 2}
    assert frame["rlnAutopickFigureOfMerit"].between(0, 1).all()
    # later commands find every tomogram from rlnTomoName alone
    picked = SubtomogramSet.from_star(out, box_size=16)
    assert len(picked) == len(frame) and len(picked.tomogram_paths) == 2
    assert main(args) == 2  # refuses to replace the picks
    assert main([*args, "--overwrite"]) == 0


def test_pick_a_tomogram_set_keeps_its_names(project, tmp_path):
    from napari_cryossl.io import read_particles

    folder = project["folder"]
    out = tmp_path / "picks.star"
    assert main(["pick", str(folder / "tomograms.star"), "--model", str(project["model"]),
                 "--threshold", "0", "--out", str(out), "--relion5"]) == 0
    assert (tmp_path / "picks_tomograms.star").is_file()
    picks = read_particles(out, tomograms=folder / "tomograms.star")
    assert set(picks["tomo_name"]) == set(NAMES)
    assert np.isfinite(picks[["x", "y", "z"]].to_numpy()).all()
    assert picks["x"].between(0, 63).all() and picks["z"].between(0, 31).all()


def test_dog_picking_of_several_tomograms(project, tmp_path):
    folder = project["folder"]
    out = tmp_path / "dog.csv"
    assert main(["pick", *(str(folder / f"{n}.mrc") for n in NAMES), "--diameter", "120",
                 "--out", str(out)]) == 0
    import pandas as pd

    frame = pd.read_csv(out)
    assert frame["tomo_name"].nunique() == 2 and len(frame) > 10


def _one_line_error(capsys, *names, one_line=True):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    if one_line:
        assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err.splitlines()[0], err
    return err


def test_a_missing_tomogram_is_named(project, tmp_path, capsys):
    from napari_cryossl.io import RelionTomogram, write_particles, write_tomograms_star

    folder = project["folder"]
    out = tmp_path / "picks.star"
    code = main(["pick", str(folder / "tomo_a.mrc"), str(tmp_path / "missing.mrc"),
                 "--model", str(project["model"]), "--out", str(out)])
    assert code == 2
    _one_line_error(capsys, "missing.mrc")
    assert not out.exists()

    records = {
        "tomo_a": RelionTomogram(
            name="tomo_a", tilt_series_pixel_size=VOXEL, size_xyz=(64, 64, 32),
            path=folder / "tomo_a.mrc",
        ),
        "tomo_b": RelionTomogram(
            name="tomo_b", tilt_series_pixel_size=VOXEL, size_xyz=(64, 64, 32),
            path=tmp_path / "gone.mrc",
        ),
    }
    star = tmp_path / "tomograms.star"
    write_tomograms_star(records, star)
    assert main(["pick", str(star), "--model", str(project["model"]), "--out", str(out)]) == 2
    _one_line_error(capsys, "gone.mrc")
    particles = tmp_path / "particles.star"  # not beside the tomograms: no fallback by name
    write_particles(project["table"], particles)
    code = main(["train-picker", str(particles), "--tomogram", str(star),
                 "--out", str(tmp_path / "p.pt"), "--steps", "3"])
    assert code == 2
    _one_line_error(capsys, "tomo_b")
    assert not out.exists() and not (tmp_path / "p.pt").exists()


def test_a_model_that_is_not_a_picker_is_named(project, tmp_path, capsys):
    import torch

    folder = project["folder"]
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    other = tmp_path / "classifier.pt"
    torch.save({"format": "something else", "box_size": 16}, other)
    for bad in (text, other, tmp_path / "absent.pt"):
        out = tmp_path / "picks.star"
        code = main(["pick", str(folder / "tomo_a.mrc"), str(folder / "tomo_b.mrc"),
                     "--model", str(bad), "--out", str(out)])
        assert code == 2
        # torch's own reason for an unreadable file spans several lines (after the name)
        _one_line_error(capsys, bad.name, one_line=bad is not text)
        assert not out.exists()
    code = main(["train-picker", str(folder / "particles.star"), "--tomogram",
                 str(folder / "tomograms.star"), "--init", str(other), "--out",
                 str(tmp_path / "p.pt"), "--steps", "3"])
    assert code == 2
    _one_line_error(capsys, "classifier.pt")


def test_mixed_voxel_sizes_are_refused(project, tmp_path, capsys):
    from napari_cryossl.io import (
        RelionTomogram,
        open_tomogram,
        read_mrc,
        write_mrc,
        write_tomograms_star,
    )

    folder = project["folder"]
    coarse = tmp_path / "coarse.mrc"
    write_mrc(coarse, read_mrc(folder / "tomo_b.mrc")[0], 2 * VOXEL)
    out = tmp_path / "picks.star"
    code = main(["pick", str(folder / "tomo_a.mrc"), str(coarse), "--model",
                 str(project["model"]), "--out", str(out)])
    assert code == 2
    err = _one_line_error(capsys, "coarse.mrc", "voxel size")
    assert "20" in err and "10" in err
    assert not out.exists()

    records = {
        "tomo_a": RelionTomogram.from_tomogram(open_tomogram(folder / "tomo_a.mrc"), name="tomo_a"),
        "tomo_b": RelionTomogram.from_tomogram(open_tomogram(coarse), name="tomo_b"),
    }
    mixed = tmp_path / "mixed_tomograms.star"
    write_tomograms_star(records, mixed)
    code = main(["train-picker", str(folder / "particles.star"), "--tomogram", str(mixed),
                 "--out", str(tmp_path / "p.pt"), "--steps", "3", "--diameter", "120"])
    assert code == 2
    _one_line_error(capsys, "voxel size")
    assert not (tmp_path / "p.pt").exists()


def test_a_copick_project_trains_and_picks(copick_project, tmp_path, capsys):
    """copick: the objects name the classes; pick writes every run's picks into one STAR."""
    config, _ = copick_project
    model = tmp_path / "picker.pt"
    assert main(["train-picker", str(config), "--copick-user", "curator", "--out", str(model),
                 "--diameter", "120", "--steps", "3"]) == 0
    state = _state(model)
    assert state["class_numbers"] == [1, 2]
    assert state["class_names"] == ["ribosome", "proteasome"]
    assert "1: ribosome" in capsys.readouterr().out
    out = tmp_path / "picks.star"
    assert main(["pick", str(config), "--model", str(model), "--threshold", "0",
                 "--max-particles", "10", "--out", str(out)]) == 0
    frame = starfile.read(out)
    assert frame["rlnTomoName"].nunique() == 2
    assert all(name.endswith("wbp.zarr") for name in frame["rlnTomoName"])


def test_several_tomograms_report_one_progress_that_only_grows(project):
    from napari_cryossl.ops import run
    from napari_cryossl.ops.pick import pick_tomograms

    folder = project["folder"]
    seen = []
    output = run(
        pick_tomograms([folder / "tomograms.star"], model=project["model"]), seen.append
    )
    assert [name for name, _ in output.per_tomogram] == list(NAMES)
    steps = [s.step for s in seen]
    assert steps == sorted(steps) and seen[-1].step == seen[-1].n_steps
    assert seen[0].stage.startswith("pick: tomo_a (1/2)")
    assert seen[-1].stage.startswith("pick: tomo_b (2/2)")
    assert list(output.table["tomo_name"].unique()) == [
        n for n, r in output.per_tomogram if len(r.table)
    ]


def _benchmark(name):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_speed_benchmark_runs_in_the_gpu_checks_dry_run(tmp_path):
    """benchmarks/bench_picker_speed.py through benchmarks/gpu_check.py's picker stage on
    the CPU at a tiny size (both dense paths, the sliding window), and TomoTwin's network
    as rewritten there: 77.6 M parameters, 37³ boxes to unit 32-D vectors."""
    import json

    import torch

    bench = _benchmark("bench_picker_speed")
    assert bench.sliding_window_count((200, 512, 512)) == 82 * 238 * 238
    volume = np.zeros((40, 41, 50))
    view = np.lib.stride_tricks.sliding_window_view(volume, (37, 37, 37))[::2, ::2, ::2]
    assert bench.sliding_window_count(volume.shape) == np.prod(view.shape[:3])
    net = bench.tomotwin_net().eval()
    assert sum(p.numel() for p in net.parameters()) == 77_563_360
    with torch.inference_mode():
        out = net(torch.randn(2, 1, 37, 37, 37))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=1), torch.ones(2))
    del net

    gpu_check = _benchmark("gpu_check")
    assert gpu_check.main(["--dry-run", "--stages", "picker", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["picker"]["status"] == "ok", results["picker"]
    (row,) = results["picker"]["rows"]
    assert [d["path"].split()[0] for d in row["dense"]] == ["learned_picker.iter_pick_with_model", "picker"]
    assert all(d["seconds"] > 0 and d["voxels_per_s"] > 0 for d in row["dense"])
    sw = row["sliding_window"]
    assert sw["windows_total"] == bench.sliding_window_count(row["shape_zyx"])
    assert sw["windows_per_s"] > 0 and row["ratio_sliding_over_dense"] > 0
    assert "TomoTwin-style sliding window" in (tmp_path / "gpu_check.md").read_text()
