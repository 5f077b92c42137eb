"""The dock opens a copick project: every run's tomogram joins the project with its
picks as particles and classes named after the pickable objects (real viewer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

copick = pytest.importorskip("copick")

VOXEL = 10.0
OBJECTS = {1: "ribosome", 2: "proteasome"}


@pytest.fixture
def copick_project(tmp_path):
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({
        "config_type": "filesystem",
        "name": "gui",
        "overlay_root": f"local://{tmp_path / 'overlay'}",
        "static_root": f"local://{tmp_path / 'static'}",
        "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [
            {"name": name, "is_particle": True, "label": label, "radius": 60.0}
            for label, name in OBJECTS.items()
        ],
    }))
    root = copick.from_file(str(config_path))
    sim = SimulationConfig(n_classes=2, box_size=16, voxel_size=VOXEL, snr=1.0,
                           particle_diameter_a=120.0)
    counts = {}
    for seed, name in enumerate(("TS_001", "TS_002")):
        vol, table = simulate_tomogram((32, 64, 64), 8, sim, seed=seed)
        run = root.new_run(name)
        run.new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(
            np.asarray(vol, dtype=np.float32)
        )
        xyz_a = table[["x", "y", "z"]].to_numpy(dtype=np.float64) * VOXEL
        classes = table["class_number"].to_numpy()
        for label, obj in OBJECTS.items():
            picks = run.new_picks(object_name=obj, session_id="1", user_id="curator")
            picks.from_numpy(xyz_a[classes == label])
        counts[name] = np.bincount(classes, minlength=3)[1:]
    return config_path, counts


def test_the_dock_opens_a_copick_project(dock, copick_project):
    config, counts = copick_project
    viewer, widget = dock()
    data = widget.show_section("data")
    assert data.add_copick_project(config) == 2
    session = widget.session
    assert len(session.project) == 2
    assert session.tomogram is not None  # the first run is shown
    rows = [data.project_list.item(i).text() for i in range(data.project_list.count())]
    assert any("TS_001" in r for r in rows) and any("TS_002" in r for r in rows)
    for path, run in zip(session.project, ("TS_001", "TS_002"), strict=True):
        store = session.project_store(path)
        names = {c["number"]: c["name"] for c in store.classes}
        assert names == OBJECTS
        got = np.bincount(store.table["class_number"].to_numpy(), minlength=3)[1:]
        np.testing.assert_array_equal(got, counts[run])
    # the shown tomogram's picks are drawn, with their classes
    assert len(session.particles_layer.data) == int(counts["TS_001"].sum())
    # switching shows the other run with its own particles; adding again adds nothing
    assert data.switch_to(session.project[1])
    assert len(session.store.table) == int(counts["TS_002"].sum())
    assert data.add_copick_project(config) == 0
    assert len(session.store.table) == int(counts["TS_002"].sum())
