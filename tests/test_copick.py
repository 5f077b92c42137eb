"""copick projects: read runs, tomograms and picks; write predictions back as picks.

The project is built in a temporary folder with copick's own API (the `copick_project`
fixture in tests/conftest.py) and read back with it.
"""

from __future__ import annotations

import numpy as np
import pytest

copick = pytest.importorskip("copick")

from napari_cryossl.cli import main  # noqa: E402
from napari_cryossl.io import InputError  # noqa: E402
from napari_cryossl.io.copick import COPICK_USER_ID, read_copick, write_copick  # noqa: E402

# The project of the `copick_project` fixture (tests/conftest.py), shared by this module.
VOXEL = 10.0
OBJECTS = {1: "ribosome", 2: "proteasome"}
RUNS = ("TS_001", "TS_002")


def test_read_copick_gives_one_table_per_run_in_voxels(copick_project):
    config, truth = copick_project
    runs = read_copick(config, voxel_spacing=VOXEL, tomo_type="wbp")
    assert [name for name, _, _ in runs] == list(RUNS)
    for name, path, table in runs:
        assert path.name == "wbp.zarr" and path.is_dir()
        xyz_a, classes = truth[name]
        assert len(table) == len(xyz_a)
        assert (table["tomo_name"] == name).all()
        got = table[["x", "y", "z"]].to_numpy() * VOXEL
        order = np.lexsort(got.T)
        want = np.lexsort(xyz_a.T)
        np.testing.assert_allclose(got[order], xyz_a[want], atol=1e-6)
        np.testing.assert_array_equal(table["class_number"].to_numpy()[order], classes[want])
    # one object's picks: unlabelled candidates; defaults: the only spacing and type
    cands = read_copick(config, object_name="ribosome")
    assert all((t["class_number"] == 0).all() for _, _, t in cands)
    assert sum(len(t) for _, _, t in cands) == sum(int((c == 1).sum()) for _, c in truth.values())


def test_read_copick_names_the_problem(copick_project):
    config, _ = copick_project
    with pytest.raises(InputError, match="voxel spacing 7"):
        read_copick(config, voxel_spacing=7.0)
    with pytest.raises(InputError, match="type 'denoised'"):
        read_copick(config, tomo_type="denoised")
    with pytest.raises(InputError, match="object 'actin'"):
        read_copick(config, object_name="actin")


def test_write_copick_rejects_a_class_without_object(copick_project, tmp_path):
    config, _ = copick_project
    _, _, table = read_copick(config)[0]
    table = table.copy()
    table["class_number"] = 3
    with pytest.raises(InputError, match="class 3"):
        write_copick(config, table, session_id="bad")


def test_finetune_and_predict_on_a_copick_project_write_picks_back(copick_project, tmp_path):
    config, truth = copick_project
    classifier = tmp_path / "classifier.pt"
    common = ["--box-size", "16", "--copick-voxel-spacing", "10", "--copick-tomo-type", "wbp"]
    train = ["--preset", "rb3d-small", "--device", "cpu", "--batch-size", "4"]
    assert (
        main(
            [
                "finetune",
                str(config),
                "--out",
                str(classifier),
                "--epochs",
                "1",
                "--min-steps",
                "0",
                "--copick-user",
                "curator",
                *common,
                *train,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                str(classifier),
                str(config),
                "--out",
                str(config),
                "--device",
                "cpu",
                "--copick-user",
                "curator",
                *common,
            ]
        )
        == 0
    )
    root = copick.from_file(str(config))
    for name in RUNS:
        run = root.get_run(name)
        sets = run.get_picks(user_id=COPICK_USER_ID, session_id="predict")
        objects = [p.pickable_object_name for p in sets]
        assert len(objects) == len(set(objects))  # one set per class
        assert set(objects) <= set(OBJECTS.values())
        points = np.concatenate([p.numpy()[0] for p in sets])
        scores = np.concatenate([p.scores() for p in sets])
        xyz_a, _ = truth[name]
        assert len(points) == len(xyz_a)
        assert ((scores > 0) & (scores <= 1)).all()
        order, want = np.lexsort(points.T), np.lexsort(xyz_a.T)
        assert np.abs(points[order] - xyz_a[want]).max() / VOXEL < 0.5


def test_a_run_without_the_tomogram_is_skipped_with_a_warning(copick_project):
    from napari_cryossl.io import InputWarning

    config, _ = copick_project
    import shutil

    root = copick.from_file(str(config))
    root.new_run("TS_empty")
    try:
        with pytest.warns(InputWarning, match="TS_empty"):
            runs = read_copick(config, voxel_spacing=VOXEL, tomo_type="wbp")
        assert [name for name, _, _ in runs] == list(RUNS)
    finally:  # the project is shared by the module's tests
        shutil.rmtree(config.parent / "overlay" / "ExperimentRuns" / "TS_empty")


def test_write_copick_writes_labels_with_scores(copick_project):
    config, truth = copick_project
    tables = [t for _, _, t in read_copick(config, voxel_spacing=VOXEL, user_id="curator")]
    table = tables[0].copy()
    table["probability"] = 0.75
    written = write_copick(config, table, voxel_spacing=VOXEL, session_id="labels")
    assert sorted(obj for _, obj, _ in written) == sorted(OBJECTS.values())
    run = copick.from_file(str(config)).get_run(RUNS[0])
    sets = run.get_picks(user_id=COPICK_USER_ID, session_id="labels")
    assert sum(len(p.points) for p in sets) == len(truth[RUNS[0]][0])
    assert all(np.allclose(p.scores(), 0.75) for p in sets)
