"""Steps 1-3 in a real viewer: open a tomogram, pick (by hand, DoG preview, import), label.

Clicks go through napari's own mouse-callback dispatch and keys through the viewer's key
handler, i.e. the code paths a real mouse click or key press takes.
"""

from __future__ import annotations

import numpy as np

from napari_cryossl.io import particle_zyx, write_particles
from napari_cryossl.particles.annotations import AnnotationStore


def _open(dock, tomogram):
    viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    return viewer, widget, widget.session


def test_open_tomogram_shows_geometry_and_lines_up_layers(dock, tomogram):
    viewer, widget, session = _open(dock, tomogram)
    image = session.image_layer
    particles = session.particles_layer
    assert image.data.shape == (32, 96, 96)
    np.testing.assert_allclose(image.scale, [10, 10, 10])
    np.testing.assert_allclose(particles.scale, image.scale)
    np.testing.assert_allclose(particles.translate, image.translate)
    assert "32 × 96 × 96" in widget.data.shape_label.text()
    assert "10 Å" in widget.data.voxel_label.text()
    # opening the same file again reuses its layer instead of stacking a copy
    assert widget.data.open_path(tomogram)
    assert sum(layer.data is image.data for layer in viewer.layers) == 1


def test_bad_file_leaves_viewer_and_annotations_intact(dock, tomogram, tmp_path):
    viewer, widget, session = _open(dock, tomogram)
    session.add_particles([[10, 20, 30]])
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\x00" * 64)
    n_layers = len(viewer.layers)
    assert not widget.data.open_path(bad)
    assert widget.data.status.is_error and "bad.mrc" in widget.data.status.text()
    assert len(viewer.layers) == n_layers
    assert session.tomogram.path.name == "tomo.mrc" and len(session.store.table) == 1


def test_click_to_add_then_select_and_delete(dock, tomogram, click, world_of):
    viewer, widget, session = _open(dock, tomogram)
    layer = session.particles_layer
    widget.picking.add_button.click()
    assert layer.mode == "add" and viewer.layers.selection.active is layer
    viewer.dims.set_point(0, 12 * 10.0)  # slice z = 12 (world Å)
    click(viewer, world_of(layer, [12, 30, 40]))
    click(viewer, world_of(layer, [12, 60, 70]))
    table = session.store.table
    assert len(table) == 2 and (table["source"] == "manual").all()
    np.testing.assert_allclose(particle_zyx(table), [[12, 30, 40], [12, 60, 70]], atol=1e-6)
    assert (table["class_number"] == 0).all()
    # unlabelled particles are hollow
    assert np.all(layer.face_color[:, 3] == 0)
    layer.selected_data = {0}
    widget.picking.delete_selected()
    np.testing.assert_allclose(particle_zyx(session.store.table), [[12, 60, 70]], atol=1e-6)
    assert len(layer.data) == 1


def test_dog_preview_then_accept(dock, tomogram, truth, qtbot):
    viewer, widget, session = _open(dock, tomogram)
    picking = widget.picking
    picking.diameter.setValue(100.0)
    picking.threshold.setValue(3.0)
    worker = picking.preview()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    preview = picking.preview_layer
    assert preview is not None and preview in viewer.layers
    assert len(session.store.table) == 0  # nothing is added before Accept
    n = len(preview.data)
    assert n >= len(truth) // 2
    np.testing.assert_allclose(preview.scale, session.image_layer.scale)
    added = picking.accept()
    assert added == n and len(session.store.table) == n
    assert (session.store.table["source"] == "auto").all()
    assert preview not in viewer.layers
    # accepting the same picks again adds nothing (they are already particles)
    worker = picking.preview()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert picking.accept() == 0 and len(session.store.table) == n


def test_import_star_keeps_classes(dock, tomogram, truth, tmp_path):
    viewer, widget, session = _open(dock, tomogram)
    star = tmp_path / "gt.star"
    write_particles(truth, star, voxel_size=10.0)
    assert widget.picking.import_file(star) == len(truth)
    table = session.store.table
    assert sorted(table["class_number"].unique()) == [1, 2]
    assert set(session.class_numbers()) >= {1, 2}
    np.testing.assert_allclose(
        np.sort(particle_zyx(table), axis=0), np.sort(particle_zyx(truth), axis=0), atol=1e-3
    )


def test_label_by_clicking_and_number_keys(dock, tomogram, click, world_of):
    viewer, widget, session = _open(dock, tomogram)
    session.add_particles([[10, 20, 30], [10, 60, 70], [20, 50, 50]])
    lab = widget.show_section("labelling")
    a = lab.add_class("ribosome")
    b = lab.add_class("proteasome")
    assert (a, b) == (1, 2) and session.current_class == b
    lab.click_button.setChecked(True)
    layer = session.particles_layer
    assert viewer.layers.selection.active is layer and layer.mode == "pan_zoom"

    viewer.dims.set_point(0, 10 * 10.0)
    click(viewer, world_of(layer, [10, 20, 30]))  # current class: proteasome
    # key "1" (handled by napari's key-binding dispatch on the active layer) -> ribosome
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key("1")
    handler.release_key("1")
    assert session.current_class == 1
    click(viewer, world_of(layer, [10, 60, 70]))
    click(viewer, world_of(layer, [10, 5, 5]))  # empty space: nothing happens
    labels = session.store.table["class_number"].tolist()
    assert labels == [2, 1, 0]
    # napari's own "1" action (delete selected points) must not fire on our layer
    assert len(layer.data) == 3
    # filled with the class colour, the unlabelled one stays hollow
    assert layer.face_color[0, 3] > 0 and layer.face_color[2, 3] == 0
    assert not np.allclose(layer.face_color[0], layer.face_color[1])
    assert "ribosome (1)" in lab.class_list.item(1).text()
    assert "proteasome (1)" in lab.class_list.item(2).text()
    assert "unlabelled (1)" in lab.class_list.item(0).text()
    # key 0 removes labels
    handler.press_key("0")
    handler.release_key("0")
    click(viewer, world_of(layer, [10, 60, 70]))
    assert session.store.table["class_number"].tolist() == [2, 0, 0]


def test_class_rename_colour_delete(dock, tomogram):
    viewer, widget, session = _open(dock, tomogram)
    session.add_particles([[10, 20, 30], [10, 60, 70]])
    lab = widget.labelling
    one = lab.add_class("class 1")
    two = lab.add_class("class 2")
    session.label_particles([0], one)
    session.label_particles([1], two)
    lab.rename_class(one, "ribosome")
    assert session.class_name(one) == "ribosome"
    lab.set_class_color(one, "#00ff00")
    np.testing.assert_allclose(session.particles_layer.border_color[0], [0, 1, 0, 1])
    lab.delete_class(two)
    assert two not in session.class_numbers()
    assert session.store.table["class_number"].tolist()[1] == 0


def test_annotations_autosave_and_come_back(dock, tomogram):
    viewer, widget, session = _open(dock, tomogram)
    session.add_particles([[10, 20, 30], [12, 60, 70]])
    widget.labelling.add_class("ribosome")
    session.label_particles([1], 1)
    store_path = session.store.path
    # saved on disk already, without any explicit save
    reloaded = AnnotationStore.for_tomogram(tomogram)
    assert reloaded.table["class_number"].tolist() == [0, 1]
    # a new viewer opening the same tomogram shows the same particles and labels
    viewer2, widget2 = dock()
    assert widget2.data.open_path(tomogram)
    s2 = widget2.session
    assert s2 is not session and s2.store.path == store_path
    np.testing.assert_allclose(s2.particles_layer.data, [[10, 20, 30], [12, 60, 70]])
    assert s2.particles_layer.features["class_number"].tolist() == [0, 1]
    assert s2.class_name(1) == "ribosome"


def test_sample_data_can_start_the_workflow(dock):
    """File ▸ Open Sample, then 'Use layer' in step 1."""
    viewer, widget = dock()
    viewer.open_sample("napari-cryossl", "crowded_tomogram")
    data = widget.data
    assert data.layer_combo.count() == 1
    data.use_button.click()
    session = widget.session
    assert session.tomogram is not None and session.tomogram.shape == (48, 160, 160)
    assert widget.picking.diameter.value() == 150  # the sample's particle diameter
    assert widget.pretrain.box_size.value() == 24  # 1.5 diameters, rounded to 8
