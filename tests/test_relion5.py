"""RELION 5 projects (tomograms.star + centred Å particles on binned tomograms), RELION-4
pixels on binned tomograms, and Dynamo tables: real files, written and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryossl.io import (
    InputError,
    RelionTomogram,
    make_particle_table,
    open_tomogram,
    particle_zyx,
    read_dynamo_table,
    read_particles,
    read_tomograms_star,
    write_dynamo_table,
    write_mrc,
    write_particles,
    write_tomograms_star,
)
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.particles.extract import extract_subtomograms

BOX = 16
#: name -> (tilt-series pixel size Å, binning, rlnTomoSizeX/Y/Z in unbinned pixels). Both
#: reconstructions have 8 Å voxels (one set can hold them); TS_02's sizes are not whole
#: multiples of its binning, so RELION's centre (size / 2 unbinned pixels) is not the
#: reconstruction's half shape there.
TOMOGRAMS = {
    "TS_01": (4.0, 2.0, (128, 96, 64)),
    "TS_02": (2.0, 4.0, (258, 192, 142)),
}


def _binned_shape(size_xyz, binning):
    w, h, d = size_xyz
    return (int(d / binning), int(h / binning + 0.5), int(w / binning + 0.5))


def _truth(rng, shape, n):
    """n voxel centres (ZYX) whose 16³ boxes lie inside a tomogram of `shape`."""
    lo = BOX // 2 + 1
    return np.column_stack([rng.uniform(lo, s - lo - 1, n) for s in shape])


def _relion_angst(zyx, size_xyz, pixel, binning):
    """RELION 5's centred Å of binned voxels: voxel i sits at unbinned pixel i * binning
    (zero origin), measured from size / 2 unbinned pixels, times the pixel size."""
    xyz = np.asarray(zyx)[:, ::-1]
    return (xyz * binning - np.asarray(size_xyz, float) / 2.0) * pixel


@pytest.fixture
def project(tmp_path) -> dict:
    """A RELION 5 project as its jobs leave it: Tomograms/job007/tomograms.star (global
    block with RELION's columns, paths relative to the project folder, one block per tilt
    series) and the binned reconstructions; Picks/job008/particles.star (optics per
    tilt-series pixel size, particles in centred Å)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "project"
    recon_dir = root / "Tomograms" / "job007" / "tomograms"
    recon_dir.mkdir(parents=True)
    rows, particles, truth = [], [], {}
    for k, (name, (pixel, binning, size)) in enumerate(TOMOGRAMS.items()):
        shape = _binned_shape(size, binning)
        write_mrc(
            recon_dir / f"rec_{name}.mrc",
            rng.normal(size=shape).astype(np.float32),
            pixel * binning,
        )
        rows.append(
            {
                "rlnTomoName": name,
                "rlnTomoTiltSeriesStarFile": f"AlignTiltSeries/job006/tilt_series/{name}.star",
                "rlnVoltage": 300.0,
                "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.1,
                "rlnMicrographOriginalPixelSize": pixel / 2,
                "rlnTomoHand": -1.0,
                "rlnOpticsGroupName": f"optics{k + 1}",
                "rlnTomoTiltSeriesPixelSize": pixel,
                "rlnTomoTomogramBinning": binning,
                "rlnTomoSizeX": size[0],
                "rlnTomoSizeY": size[1],
                "rlnTomoSizeZ": size[2],
                "rlnTomoReconstructedTomogram": f"Tomograms/job007/tomograms/rec_{name}.mrc",
            }
        )
        zyx = _truth(rng, shape, 5)
        truth[name] = zyx
        angst = _relion_angst(zyx, size, pixel, binning)
        particles.append(
            pd.DataFrame(
                {
                    "rlnTomoName": name,
                    "rlnCenteredCoordinateXAngst": angst[:, 0],
                    "rlnCenteredCoordinateYAngst": angst[:, 1],
                    "rlnCenteredCoordinateZAngst": angst[:, 2],
                    "rlnAngleRot": rng.uniform(-180, 180, len(zyx)),
                    "rlnAngleTilt": rng.uniform(0, 180, len(zyx)),
                    "rlnAnglePsi": rng.uniform(-180, 180, len(zyx)),
                    "rlnOpticsGroup": k + 1,
                    "rlnClassNumber": [1, 2, 1, 2, 1],
                }
            )
        )
    tilts = pd.DataFrame({"rlnTomoNominalStageTiltAngle": [-3.0, 0.0, 3.0]})
    tomograms = root / "Tomograms" / "job007" / "tomograms.star"
    starfile.write({"global": pd.DataFrame(rows), "TS_01": tilts, "TS_02": tilts}, tomograms)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["optics1", "optics2"],
            "rlnTomoTiltSeriesPixelSize": [v[0] for v in TOMOGRAMS.values()],
            "rlnVoltage": [300.0, 300.0],
        }
    )
    star = root / "Picks" / "job008" / "particles.star"
    star.parent.mkdir(parents=True)
    starfile.write({"optics": optics, "particles": pd.concat(particles, ignore_index=True)}, star)
    return {
        "root": root,
        "tomograms": tomograms,
        "particles": star,
        "truth": truth,
        "mrc": {name: recon_dir / f"rec_{name}.mrc" for name in TOMOGRAMS},
    }


def _truth_rows(project) -> np.ndarray:
    return np.concatenate([project["truth"][name] for name in TOMOGRAMS])


# -------------------------------------------------------------------------- tomograms.star


def test_tomograms_star_gives_pixel_size_binning_size_and_reconstruction(project):
    records = read_tomograms_star(project["tomograms"])
    assert list(records) == ["TS_01", "TS_02"]
    for name, (pixel, binning, size) in TOMOGRAMS.items():
        rec = records[name]
        assert rec.tilt_series_pixel_size == pixel and rec.binning == binning
        assert rec.size_xyz == tuple(float(s) for s in size)
        assert rec.voxel_size == 8.0
        assert rec.shape == open_tomogram(project["mrc"][name]).shape
        # RELION's paths are relative to the project folder, a parent of the STAR's
        assert rec.path == project["mrc"][name]
    # X, Y rounded and Z truncated, as relion_tomo_reconstruct_tomogram sizes them
    assert records["TS_02"].shape == (35, 48, 65)
    np.testing.assert_allclose(records["TS_02"].centre_xyz, [32.25, 24.0, 17.75])


def test_tomograms_star_without_binning_takes_it_from_the_reconstruction(project, tmp_path):
    blocks = starfile.read(project["tomograms"], always_dict=True)
    blocks["global"] = blocks["global"].drop(columns=["rlnTomoTomogramBinning"])
    path = project["tomograms"].with_name("no_binning.star")
    starfile.write(blocks, path)
    records = read_tomograms_star(path)
    assert records["TS_01"].binning == pytest.approx(2.0)
    assert records["TS_02"].binning == pytest.approx(4.0)


def test_tomograms_star_round_trip(tmp_path):
    records = {
        "TS_01": RelionTomogram("TS_01", 1.35, (4092.0, 4092.0, 1392.0), 6.0, tmp_path / "a.mrc"),
        "TS_02": RelionTomogram("TS_02", 1.35, (4092.0, 4092.0, 1392.0), 6.0, None),
    }
    out = tmp_path / "tomograms.star"
    write_tomograms_star(records, out)
    back = read_tomograms_star(out)
    assert back["TS_01"] == records["TS_01"]
    assert back["TS_02"].path is None and back["TS_02"].shape == (232, 682, 682)


def test_bad_tomogram_sets_name_the_file_and_the_problem(project, tmp_path):
    with pytest.raises(InputError, match=r"particles\.star: not a RELION tomogram set.*particle"):
        read_tomograms_star(project["particles"])
    blocks = starfile.read(project["tomograms"], always_dict=True)
    broken = tmp_path / "broken.star"
    starfile.write({"global": blocks["global"].drop(columns=["rlnTomoSizeZ"])}, broken)
    with pytest.raises(InputError, match=r"broken\.star \(data_global\): missing .*rlnTomoSizeZ"):
        read_tomograms_star(broken)
    bad = blocks["global"].copy()
    bad.loc[1, "rlnTomoTiltSeriesPixelSize"] = 0.0
    starfile.write({"global": bad}, broken)
    with pytest.raises(InputError, match=r"broken\.star.*'TS_02'.*rlnTomoTiltSeriesPixelSize"):
        read_tomograms_star(broken)


# --------------------------------------------------------------------- RELION 5 round trip


def test_relion5_project_round_trips_within_half_a_voxel(project, tmp_path):
    truth = _truth_rows(project)
    # read: each particle in its own (binned) tomogram's voxels, by RELION's geometry
    table = read_particles(project["particles"], tomograms=project["tomograms"])
    assert table.attrs["format"] == "relion5"
    np.testing.assert_allclose(particle_zyx(table), truth, atol=1e-9)

    # extract: the boxes around those voxels, from the right reconstruction
    data = SubtomogramSet.from_star(
        project["particles"], tomograms=project["tomograms"], box_size=BOX
    )
    np.testing.assert_allclose(data.centers_zyx(), truth, atol=1e-9)
    assert data.voxel_size == 8.0 and data.inside().all()
    start = 0
    for name in TOMOGRAMS:
        zyx = project["truth"][name]
        rows = np.arange(start, start + len(zyx))
        start += len(zyx)
        expected, _ = extract_subtomograms(open_tomogram(project["mrc"][name]), zyx, BOX)
        np.testing.assert_array_equal(data.load(rows), expected)

    # write: centred Å and rlnTomoName, classes, probabilities; the tomogram set beside
    out_table = data.table.copy()
    out_table["probability"] = np.linspace(0.5, 1.0, len(out_table))
    out = tmp_path / "classified.star"
    write_particles(out_table, out, relion5=True, tomograms=data.relion_tomograms)
    write_tomograms_star(data.relion_tomograms, tmp_path / "classified_tomograms.star")
    written = starfile.read(out)
    source = starfile.read(project["particles"])["particles"]
    assert "rlnCoordinateX" not in written.columns
    assert list(written["rlnTomoName"]) == list(source["rlnTomoName"])
    for axis in "XYZ":
        label = f"rlnCenteredCoordinate{axis}Angst"
        # within 0.5 voxel (8 Å) is the requirement; the geometry is exact
        np.testing.assert_allclose(written[label], source[label], atol=1e-6)
    np.testing.assert_array_equal(written["rlnClassNumber"], source["rlnClassNumber"])
    np.testing.assert_allclose(written["rlnMaxValueProbDistribution"], out_table["probability"])

    # and back again, from the files just written
    records = read_tomograms_star(tmp_path / "classified_tomograms.star")
    assert records == read_tomograms_star(project["tomograms"])
    again = SubtomogramSet.from_star(out, tomograms=tmp_path / "classified_tomograms.star")
    np.testing.assert_allclose(again.centers_zyx(), truth, atol=1e-9)


def test_a_moved_reconstruction_found_by_name_is_used_and_said(project):
    """When the tomograms.star's rlnTomoReconstructedTomogram is gone but a tomogram of that
    name lies next to the particle STAR, that one is used, and a warning names both files."""
    from napari_cryossl.io import InputWarning

    name = next(iter(TOMOGRAMS))
    moved = project["particles"].parent / f"{name}.mrc"
    project["mrc"][name].rename(moved)
    with pytest.warns(InputWarning, match=rf"rec_{name}\.mrc .*does not exist; using .*{name}\.mrc"):
        data = SubtomogramSet.from_star(
            project["particles"], tomograms=project["tomograms"], box_size=BOX
        )
    np.testing.assert_allclose(data.centers_zyx(), _truth_rows(project), atol=1e-9)


def test_relion5_particles_on_a_given_binned_tomogram(project):
    """One tomogram given as an MRC (no tomograms.star): its shape and voxel size place the
    particles; only TS_01, whose size is a whole number of binned voxels, is exact so."""
    sub = project["particles"].with_name("ts01.star")
    blocks = starfile.read(project["particles"], always_dict=True)
    parts = blocks["particles"]
    blocks["particles"] = parts[parts["rlnTomoName"] == "TS_01"]
    starfile.write(blocks, sub)
    data = SubtomogramSet.from_star(sub, tomogram=project["mrc"]["TS_01"], box_size=BOX)
    np.testing.assert_allclose(data.centers_zyx(), project["truth"]["TS_01"], atol=1e-9)


def test_tomograms_star_and_particles_that_disagree_are_refused(project, tmp_path):
    blocks = starfile.read(project["particles"], always_dict=True)
    blocks["particles"].loc[0, "rlnTomoName"] = "TS_99"
    other = tmp_path / "other.star"
    starfile.write(blocks, other)
    with pytest.raises(InputError, match=r"other\.star: tomogram 'TS_99' is not in the tomograms"):
        SubtomogramSet.from_star(other, tomograms=project["tomograms"])
    # a reconstruction of another size than the record says
    write_mrc(project["mrc"]["TS_01"], np.zeros((10, 20, 30), np.float32), 8.0)
    with pytest.raises(InputError, match=r"'TS_01' .* 30x20x10 voxels .* another reconstruction"):
        SubtomogramSet.from_star(project["particles"], tomograms=project["tomograms"])
    with pytest.raises(InputError, match="either a tomogram or a tomograms.star"):
        SubtomogramSet.from_star(
            project["particles"], tomogram=project["mrc"]["TS_02"], tomograms=project["tomograms"]
        )


# ----------------------------------------------------- RELION 4 pixels on binned tomograms


def _relion4_star(path, zyx, binning, *, name="tomo", pixel=1.35, where="optics"):
    """A RELION-4 particle file: unbinned tilt-series pixels (binned voxel i = pixel
    i * binning), the pixel size in the optics block or as a particle column (or none)."""
    xyz = np.asarray(zyx)[:, ::-1] * binning
    particles = pd.DataFrame(
        {
            "rlnTomoName": name,
            "rlnCoordinateX": xyz[:, 0],
            "rlnCoordinateY": xyz[:, 1],
            "rlnCoordinateZ": xyz[:, 2],
            "rlnClassNumber": 1,
            "rlnOpticsGroup": 1,
        }
    )
    blocks = {"particles": particles}
    if where == "optics":
        blocks = {
            "optics": pd.DataFrame(
                {
                    "rlnOpticsGroup": [1],
                    "rlnOpticsGroupName": ["opticsGroup1"],
                    "rlnTomoTiltSeriesPixelSize": [pixel],
                }
            ),
            "particles": particles,
        }
    elif where == "column":
        particles["rlnTomoTiltSeriesPixelSize"] = pixel
    starfile.write(blocks, path)
    return path


@pytest.mark.parametrize("binning", [2, 4])
@pytest.mark.parametrize("where", ["optics", "column"])
def test_relion4_pixels_on_a_binned_tomogram_extract_the_right_boxes(tmp_path, binning, where):
    """The known bug: unbinned tilt-series pixels against a binned tomogram failed with
    "outside the tomogram". They are rescaled by tilt-series pixel / voxel size."""
    rng = np.random.default_rng(binning)
    shape = (64 // binning + 8, 256 // binning, 320 // binning)
    tomo_path = tmp_path / "tomo.mrc"
    write_mrc(tomo_path, rng.normal(size=shape).astype(np.float32), 1.35 * binning)
    zyx = _truth(rng, shape, 6)
    star = _relion4_star(tmp_path / "picks.star", zyx, binning, where=where)
    expected, _ = extract_subtomograms(open_tomogram(tomo_path), zyx, BOX)

    given = SubtomogramSet.from_star(star, tomogram=tomo_path, box_size=BOX)  # --tomogram
    found = SubtomogramSet.from_star(star, box_size=BOX)  # rlnTomoName next to the STAR
    for data in (given, found):
        # (the MRC header's voxel size is a float32: 1e-6 voxel, not 0)
        np.testing.assert_allclose(data.centers_zyx(), zyx, atol=1e-5)
        np.testing.assert_array_equal(data.load(range(len(zyx))), expected)
    # the GUI's import and the reader go through read_particles the same way
    table = read_particles(star, tomogram_shape=shape, voxel_size=1.35 * binning)
    np.testing.assert_allclose(particle_zyx(table), zyx, atol=1e-9)
    # without the tomogram's voxel size the pixels stay as written (and say their size)
    raw = read_particles(star)
    np.testing.assert_allclose(particle_zyx(raw), zyx * binning, atol=1e-9)
    assert raw.attrs["voxel_size"] == 1.35


def test_relion4_pixels_without_their_pixel_size_still_explain_the_error(tmp_path):
    rng = np.random.default_rng(0)
    shape = (20, 40, 50)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=shape).astype(np.float32), 5.4)
    star = _relion4_star(tmp_path / "picks.star", [[18.0, 30.0, 40.0]], 4, where="none")
    with pytest.raises(
        InputError,
        match=r"picks\.star: .*outside the tomogram.*"
        r"rlnTomoTiltSeriesPixelSize",
    ):
        SubtomogramSet.from_star(star, box_size=BOX)


def test_relion4_pixels_with_a_tomograms_star(tmp_path):
    """The tilt-series pixel size may come from the tomograms.star instead of the file."""
    rng = np.random.default_rng(1)
    record = RelionTomogram("tomo", 1.35, (320.0, 256.0, 96.0), 4.0, tmp_path / "tomo.mrc")
    write_mrc(record.path, rng.normal(size=record.shape).astype(np.float32), record.voxel_size)
    write_tomograms_star({"tomo": record}, tmp_path / "tomograms.star")
    zyx = _truth(rng, record.shape, 4)
    star = _relion4_star(tmp_path / "picks.star", zyx, 4, where="none")
    data = SubtomogramSet.from_star(star, tomograms=tmp_path / "tomograms.star", box_size=BOX)
    np.testing.assert_allclose(data.centers_zyx(), zyx, atol=1e-9)


# -------------------------------------------------------------------------------- Dynamo


def test_dynamo_table_columns_match_a_hand_computed_row(tmp_path):
    pytest.importorskip("dynamotable")
    table = make_particle_table(
        [[5.0, 10.5, 20.25], [7.0, 8.0, 9.0], [1.0, 2.0, 3.0]],
        class_number=[2, 0, 1],
        tomo_name=["TS_01", "TS_02", "TS_01"],
        probability=[0.75, np.nan, 1.0],
    )
    out = tmp_path / "particles.tbl"
    doc = write_dynamo_table(table, out, voxel_size=8.0)
    rows = np.loadtxt(out)
    assert rows.shape[0] == 3 and rows.shape[1] >= 36
    first = rows[0]
    # Dynamo column numbers are 1-based: col k is first[k - 1]
    assert first[0] == 1 and first[1] == 1  # tag, aligned
    np.testing.assert_array_equal(first[3:9], 0)  # dx, dy, dz, tdrot, tilt, narot
    assert first[9] == 0.75  # cc: the predicted probability
    assert first[19] == 1 and first[21] == 2  # tomo (index into the table map), class
    np.testing.assert_array_equal(first[23:26], [20.25 + 1, 10.5 + 1, 5.0 + 1])  # x, y, z
    assert first[35] == 8.0  # apix
    assert rows[1, 19] == 2 and rows[1, 21] == 0 and rows[1, 9] == 0
    assert rows[2, 0] == 3 and rows[2, 19] == 1
    assert doc == tmp_path / "particles.doc"
    assert doc.read_text() == "1 TS_01\n2 TS_02\n"

    back = read_dynamo_table(out)
    np.testing.assert_allclose(particle_zyx(back), particle_zyx(table), atol=1e-12)
    assert back["class_number"].tolist() == [2, 0, 1]
    assert back["tomo_name"].tolist() == ["TS_01", "TS_02", "TS_01"]


def test_dynamo_table_refusals_name_the_file(tmp_path):
    pytest.importorskip("dynamotable")
    files = make_particle_table(None, image_name=["/data/p1.mrc"])
    with pytest.raises(InputError, match=r"files\.tbl: particle 1 has no coordinates"):
        write_dynamo_table(files, tmp_path / "files.tbl")
    with pytest.raises(InputError, match=r"out\.star: a Dynamo table must end in \.tbl"):
        write_dynamo_table(make_particle_table([[1, 2, 3]]), tmp_path / "out.star")
    spaced = make_particle_table([[1, 2, 3]], tomo_name="my tomo.mrc")
    with pytest.raises(InputError, match=r"spaced\.tbl: tomogram name 'my tomo\.mrc'"):
        write_dynamo_table(spaced, tmp_path / "spaced.tbl")
    short = tmp_path / "short.tbl"
    short.write_text("1 1 0 0 0 0\n")
    with pytest.raises(InputError, match=r"short\.tbl: a Dynamo table has at least 26 columns"):
        read_dynamo_table(short)


# ------------------------------------------------------------------------------------ CLI


def test_cli_predict_writes_relion5_and_dynamo(project, tmp_path):
    """`cryossl finetune/predict --tomogram tomograms.star`, then `--relion5` and `.tbl`
    outputs; the default output stays the input file with classes set."""
    pytest.importorskip("dynamotable")
    from napari_cryossl.cli import main

    particles, tomograms = str(project["particles"]), str(project["tomograms"])
    classifier = tmp_path / "classifier.pt"
    common = ["--tomogram", tomograms, "--box-size", str(BOX), "--device", "cpu"]
    assert (
        main(
            [
                "finetune",
                particles,
                "--out",
                str(classifier),
                "--epochs",
                "1",
                "--min-steps",
                "0",
                "--preset",
                "rb3d-small",
                "--batch-size",
                "4",
                *common,
            ]
        )
        == 0
    )
    source = starfile.read(project["particles"])["particles"]

    default = tmp_path / "predicted.star"
    assert main(["predict", str(classifier), particles, "--out", str(default), *common]) == 0
    kept = starfile.read(default)
    assert set(source.columns) <= set(kept["particles"].columns) and "optics" in kept
    assert not (tmp_path / "predicted_tomograms.star").exists()

    relion5 = tmp_path / "relion5.star"
    assert (
        main(["predict", str(classifier), particles, "--out", str(relion5), "--relion5", *common])
        == 0
    )
    written = starfile.read(relion5)
    for axis in "XYZ":
        label = f"rlnCenteredCoordinate{axis}Angst"
        np.testing.assert_allclose(written[label], source[label], atol=1e-6)
    assert list(written["rlnTomoName"]) == list(source["rlnTomoName"])
    assert set(written["rlnClassNumber"]) <= {1, 2}
    assert written["rlnMaxValueProbDistribution"].between(0.5, 1.0).all()
    assert list(read_tomograms_star(tmp_path / "relion5_tomograms.star")) == ["TS_01", "TS_02"]

    dynamo = tmp_path / "averaging.tbl"
    assert main(["predict", str(classifier), particles, "--out", str(dynamo), *common]) == 0
    table = read_dynamo_table(dynamo)
    np.testing.assert_allclose(particle_zyx(table), _truth_rows(project), atol=1e-9)
    assert table["tomo_name"].tolist() == list(source["rlnTomoName"])
    assert set(np.loadtxt(dynamo)[:, 35]) == {8.0}


def test_cli_pick_relion5_and_dynamo_outputs(tmp_path, capsys):
    pytest.importorskip("dynamotable")
    from napari_cryossl.cli import main
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(n_classes=2, box_size=16, snr=1.0, voxel_size=10.0)
    volume, _ = simulate_tomogram((32, 64, 72), 8, config, seed=2)
    tomo = tmp_path / "TS_05.mrc"
    write_mrc(tomo, volume, 10.0)
    plain, five, tbl = tmp_path / "picks.star", tmp_path / "picks5.star", tmp_path / "picks.tbl"
    for out, extra in ((plain, []), (five, ["--relion5"]), (tbl, [])):
        args = ["pick", str(tomo), "--diameter", "100", "--out", str(out), *extra]
        assert main(args) == 0
    expected = particle_zyx(read_particles(plain))
    assert len(expected) > 0
    records = read_tomograms_star(tmp_path / "picks5_tomograms.star")
    assert records["TS_05.mrc"].path == tomo and records["TS_05.mrc"].voxel_size == 10.0
    back = read_particles(five, tomograms=records)
    np.testing.assert_allclose(particle_zyx(back), expected, atol=1e-9)
    np.testing.assert_allclose(particle_zyx(read_dynamo_table(tbl)), expected, atol=1e-9)
    assert (
        main(
            ["pick", str(tomo), "--diameter", "100", "--out", str(tmp_path / "p.csv"), "--relion5"]
        )
        == 2
    )
    assert "--relion5 writes RELION STAR files" in capsys.readouterr().err


def test_relion5_output_refuses_particles_without_geometry(tmp_path):
    table = make_particle_table([[1.0, 2.0, 3.0]], tomo_name="TS_01")
    with pytest.raises(
        InputError,
        match=r"out\.star: relion5=True needs the shape and voxel "
        r"size of tomogram 'TS_01'",
    ):
        write_particles(
            table,
            tmp_path / "out.star",
            relion5=True,
            tomograms={"TS_02": RelionTomogram("TS_02", 1.0, (10.0, 10.0, 10.0))},
        )
    assert not Path(tmp_path / "out.star").exists()
