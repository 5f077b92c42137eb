"""Fixtures for the real-viewer widget tests (napari's make_napari_viewer + pytest-qt, Xvfb).

Everything is tiny so each test takes seconds on a 2-core CPU: a 32×96×96 simulated
tomogram with 12 particles of 2 classes, 16³ boxes, rb3d-small, 1 epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# napari registers this plugin itself (entry point "napari"); listing it makes the
# make_napari_viewer fixture available even where plugin autoloading is switched off.
try:  # pragma: no cover - depends on how pytest was started
    import napari.utils._testsupport  # noqa: F401
except ImportError:  # pragma: no cover
    pass

VOXEL_SIZE = 10.0
DIAMETER_A = 100.0
SHAPE = (32, 96, 96)
N_PARTICLES = 12
BOX = 16


@pytest.fixture(autouse=True)
def _isolated_files(tmp_path, monkeypatch):
    """Sample data and settings go to the test's own folder, never to the user's cache."""
    monkeypatch.setenv("NAPARI_CRYOSSL_SAMPLE_DIR", str(tmp_path / "sample"))
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """(tomogram MRC path, ground-truth table): 2 classes, dark particles, SNR high enough
    that DoG picking finds them."""
    from napari_cryossl.io import write_mrc
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    folder = tmp_path_factory.mktemp("simulated")
    config = SimulationConfig(
        n_classes=2, box_size=BOX, voxel_size=VOXEL_SIZE, snr=1.0, particle_diameter_a=DIAMETER_A
    )
    volume, truth = simulate_tomogram(SHAPE, N_PARTICLES, config, seed=1)
    path = folder / "tomo.mrc"
    write_mrc(path, volume, VOXEL_SIZE)
    return path, truth


@pytest.fixture
def tomogram(simulated, tmp_path) -> Path:
    """A fresh copy of the simulated tomogram (so each test starts without annotations)."""
    import shutil

    src, _ = simulated
    dst = tmp_path / "data" / "tomo.mrc"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


@pytest.fixture
def truth(simulated):
    return simulated[1].copy()


@pytest.fixture
def dock(make_napari_viewer):
    """A viewer with the workflow dock added the way napari's Plugins menu does it."""

    def make():
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
        return viewer, widget

    return make


@pytest.fixture
def run_briefly(qtbot):
    """`run_briefly(section, resume=False)`: start a training section's run, wait for its
    first progress report (or error), cancel it and wait for it to end; returns the
    (errors, statuses) the worker sent."""

    def run(section, resume: bool = False):
        errors, statuses = [], []
        worker = section.start(resume=resume)
        assert worker is not None, section.status.text()
        worker.errored.connect(errors.append)
        worker.yielded.connect(statuses.append)
        qtbot.waitUntil(lambda: bool(statuses or errors) or section.worker is None,
                        timeout=180_000)
        section.cancel()
        if section.worker is not None:
            with qtbot.waitSignal(worker.finished, timeout=180_000):
                pass
        return errors, statuses

    return run


@pytest.fixture
def click():
    """`click(viewer, world_position)`: a mouse click through napari's dispatch."""
    return _click


@pytest.fixture
def world_of():
    """`world_of(layer, zyx)`: the world (Å) position of a voxel coordinate of a layer."""
    return _world_of


def _world_of(layer, zyx) -> np.ndarray:
    """World (Å) position of a data (voxel) coordinate of `layer`."""
    return np.asarray(layer.data_to_world(np.asarray(zyx, dtype=float)))


def _click(viewer, world_position, *, button=1):
    """Send a mouse press + release at a world position through napari's own dispatch
    (the same callbacks a click on the canvas calls)."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import (
        mouse_press_callbacks,
        mouse_release_callbacks,
    )
    from vispy.util.event import Event  # napari's mouse events are vispy events

    position = tuple(float(v) for v in world_position)
    common = {
        "button": button,
        "is_dragging": False,
        "modifiers": [],
        "position": position,
        "view_direction": np.asarray(viewer.camera.view_direction)
        if viewer.dims.ndisplay == 3
        else None,
        "dims_displayed": list(viewer.dims.displayed),
        "dims_point": list(viewer.dims.point),
        "pos": np.zeros(2),  # screen position: same for press and release (a click, no drag)
        "delta": np.zeros(2),
    }
    press = ReadOnlyWrapper(Event(type="mouse_press", **common), exceptions=("handled",))
    mouse_press_callbacks(viewer, press)
    active = viewer.layers.selection.active
    if active is not None:
        mouse_press_callbacks(active, press)
    release = ReadOnlyWrapper(Event(type="mouse_release", **common), exceptions=("handled",))
    mouse_release_callbacks(viewer, release)
    if active is not None:
        mouse_release_callbacks(active, release)
