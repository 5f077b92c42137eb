"""The particle diameter says its unit, shows its size in voxels, and a diameter typed in
the wrong unit warns and never shrinks the markers to dots."""

from __future__ import annotations

import numpy as np

from napari_cryossl._widgets._style import MIN_MARKER_PX, MIN_MARKER_VOXELS
from napari_cryossl.io import write_particles


def test_a_tiny_diameter_warns_and_markers_keep_a_visible_size(dock, tomogram, truth):
    viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    star = tomogram.with_name("truth.star")
    write_particles(truth, star, voxel_size=10.0)
    widget.picking.import_file(star)
    session, picking = widget.session, widget.picking
    layer = session.ensure_particles_layer()
    from qtpy.QtWidgets import QLabel

    assert "Particle diameter (Å):" in [w.text() for w in picking.findChildren(QLabel)]
    assert picking.diameter.suffix() == " Å"

    picking.diameter.setValue(120.0)
    assert picking.diameter_px.text() == "= 12.0 voxels"  # 10 Å voxels
    np.testing.assert_allclose(layer.size, 12.0)
    assert not picking.status.is_error

    picking.diameter.setValue(8.0)  # Å typed for... voxels? A dot: warn first
    assert picking.diameter_px.text() == "= 0.8 voxels"
    assert picking.status.is_error and "only 0.8 voxels" in picking.status.text()
    np.testing.assert_allclose(layer.size, MIN_MARKER_VOXELS)  # still visible discs
    assert layer.canvas_size_limits[0] == MIN_MARKER_PX
    radius_a = 0.5 * MIN_MARKER_VOXELS * session.voxel_size
    assert viewer.dims.margin_left[0] == radius_a  # shown on the slices it spans
