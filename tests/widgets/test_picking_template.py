"""The Picking section picks by template matching: a template file, the method, preview,
accept."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# the `simulated` fixture's settings (conftest.py)
BOX, DIAMETER_A, VOXEL_SIZE = 16, 100.0, 10.0


def test_the_dock_picks_by_template_matching(dock, tomogram, truth, qtbot, tmp_path):
    from napari_cryossl.io import write_mrc
    from napari_cryossl.simulate import SimulationConfig
    from napari_cryossl.simulate.render import _render
    from napari_cryossl.simulate.shapes import _assemblies

    # the template: class 1 of the simulated tomogram, as a map file
    config = SimulationConfig(
        n_classes=2, box_size=BOX, voxel_size=VOXEL_SIZE, particle_diameter_a=DIAMETER_A
    )
    a = _assemblies(config)[0]
    size = int(2 * np.ceil(a.radius) + 5)
    centres = a.centres_xyz[:, ::-1] + size // 2
    template = _render(centres[None], a.sigmas[None], a.weights[None], (size,) * 3)[0]
    write_mrc(tmp_path / "ring.mrc", template, VOXEL_SIZE)

    _viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    picking, session = widget.picking, widget.session
    assert not picking.template.isEnabled()  # DoG by default
    assert "TRiC" in [picking.template.itemText(i) for i in range(picking.template.count())]
    picking.method.setCurrentIndex(picking.method.findData("template"))
    assert picking.template.isEnabled() and not picking.refine.isEnabled()
    picking.set_template_file(tmp_path / "ring.mrc")
    assert picking.template.currentText() == "ring.mrc"
    picking.angular_step.setValue(30.0)

    worker = picking.preview()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    assert not picking.status.is_error, picking.status.text()
    picked = np.array(picking.preview_layer.data)
    assert len(picked) > 0
    ring = truth[truth["class_number"] == 1][["z", "y", "x"]].to_numpy(float)
    dist, _ = cKDTree(picked).query(ring)
    assert (dist <= DIAMETER_A / VOXEL_SIZE / 4).mean() >= 0.5
    assert picking.accept() == len(picked)
    assert len(session.store.table) == len(picked)


def test_template_matching_can_be_stopped(dock, tomogram, qtbot, tmp_path):
    from napari_cryossl.io import write_mrc

    grid = np.indices((15, 15, 15)) - 7
    write_mrc(tmp_path / "ball.mrc", (np.sqrt((grid**2).sum(0)) <= 5).astype(np.float32), 10.0)
    _viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    picking = widget.picking
    picking.method.setCurrentIndex(picking.method.findData("template"))
    picking.set_template_file(tmp_path / "ball.mrc")
    picking.angular_step.setValue(5.0)  # thousands of rotations: minutes
    worker = picking.preview()
    assert picking.stop_button.isVisibleTo(picking)
    picking.stop()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert "stopped" in picking.status.text() and not picking.status.is_error
    assert picking.preview_layer is None
    assert not picking.stop_button.isVisibleTo(picking)
