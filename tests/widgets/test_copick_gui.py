"""The dock opens a copick project: every run's tomogram joins the project with its
picks as particles and classes named after the pickable objects (real viewer)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("copick")

# The objects of the `copick_project` fixture (tests/conftest.py).
OBJECTS = {1: "ribosome", 2: "proteasome"}


def test_the_dock_opens_a_copick_project(dock, copick_project):
    config, truth = copick_project
    counts = {run: np.bincount(classes, minlength=3)[1:] for run, (_, classes) in truth.items()}
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
