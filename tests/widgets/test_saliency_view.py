"""Section 8, Grad-CAM, as a person sees it in a real viewer: a colour bar, contrast limits
from the heatmap itself, a 3D rendering that shows the hot parts, a crop centred on one
particle, and particle markers that come back when the viewer goes to a particle."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl.io import particle_zyx, write_particles

BOX = 16
TIMEOUT_MS = 120_000


@pytest.fixture
def explained(dock, tomogram, truth, qtbot):
    """A dock with the ground-truth particles and a (random, He-initialised) classifier
    of their two classes: what Grad-CAM needs, without training."""
    import torch

    from napari_cryossl.nn.checkpoints import checkpoint_state, save_checkpoint
    from napari_cryossl.nn.models import Classifier, build_encoder

    viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    star = tomogram.with_name("truth.star")
    write_particles(truth, star, voxel_size=10.0)
    widget.picking.import_file(star)
    session = widget.session
    torch.manual_seed(0)
    model = Classifier(build_encoder("rb3d", BOX, width=16, fc_dim=256), 2)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = session.work_dir / "classifier.pt"
    save_checkpoint(path, checkpoint_state(model.eval(), voxel_size=10.0, class_numbers=[1, 2]))
    session.use_classifier(path)
    section = widget.show_section("saliency")
    section.device.setCurrentText("cpu")

    def run(indices):
        worker = section.start(indices=indices)
        assert worker is not None, section.status.text()
        with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
            pass
        assert section.heatmap_layer is not None, section.status.text()
        return section.heatmap_layer

    return viewer, widget, session, section, run


def _central(session) -> int:
    """The particle farthest from the tomogram's faces: its whole box lies inside."""
    zyx = particle_zyx(session.store.table)
    shape = np.asarray(session.tomogram.shape)
    return int(np.argmax(np.minimum(zyx, shape - 1 - zyx).min(axis=1)))


def test_the_heatmap_has_a_colour_bar_limits_from_its_data_and_a_3d_rendering(explained):
    viewer, widget, session, section, run = explained
    heat = run(np.arange(len(session.store.table)))
    data = np.asarray(heat.data)
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    assert heat.colorbar.visible  # a person can read what the colours mean
    # the limits are the heatmap's own robust range, not napari's (0, 1) default
    expected = np.percentile(data[data > 0], [50, 99.5])
    np.testing.assert_allclose(heat.contrast_limits, expected, rtol=1e-5)
    assert heat.contrast_limits[0] > 0 and heat.contrast_limits[1] <= data.max()
    assert "colour bar" in section.status.text()

    # 3D: the heatmap as an attenuated maximum projection, the (dark-protein) tomogram as
    # a minimum projection; 2D again: the tomogram's own rendering is back
    image = session.image_layer
    before = image.rendering
    section.view_button.setChecked(True)
    assert viewer.dims.ndisplay == 3
    assert heat.rendering == "attenuated_mip" and heat.visible
    assert image.rendering == "minip"
    section.view_button.setChecked(False)
    assert viewer.dims.ndisplay == 2 and image.rendering == before
    viewer.dims.ndisplay = 3  # napari's own 2D/3D button does the same
    assert section.view_button.isChecked() and image.rendering == "minip"
    viewer.dims.ndisplay = 2
    assert not section.view_button.isChecked() and image.rendering == before


def test_one_particle_is_shown_centred_in_a_crop_of_its_box(explained):
    viewer, widget, session, section, run = explained
    image = session.image_layer
    k = _central(session)
    zyx = particle_zyx(session.store.table)[k]
    world = np.asarray(image.data_to_world(zyx))
    run([k])
    # one particle: the view goes to it
    np.testing.assert_allclose(viewer.camera.center[-2:], world[-2:], atol=1e-6)
    assert viewer.dims.point[0] == pytest.approx(world[0], abs=session.voxel_size)

    section.crop_check.setChecked(True)
    crop, tomo = section.crop_layer, section.crop_tomogram_layer
    assert crop is not None and crop in viewer.layers and tomo in viewer.layers
    edge = crop.data.shape[0]
    assert crop.data.shape == (edge,) * 3 and edge % 2 == 1 and edge >= BOX - 1
    # the crop's central voxel is the particle's voxel, in world coordinates (Å)
    middle = np.full(3, (edge - 1) / 2)
    centre = np.asarray(crop.data_to_world(middle))
    np.testing.assert_allclose(centre, image.data_to_world(np.floor(zyx + 0.5)), atol=1e-6)
    assert np.all(np.abs(centre - world) <= 0.5 * session.voxel_size + 1e-6)
    np.testing.assert_allclose(tomo.data_to_world(middle), centre, atol=1e-6)
    # the tomogram crop is the tomogram there; the heatmap crop is the middle of its box
    start = np.floor(zyx + 0.5).astype(int) - edge // 2
    region = tuple(slice(s, s + edge) for s in start)
    np.testing.assert_allclose(tomo.data, np.asarray(session.tomogram.data[region]), rtol=1e-6)
    first = BOX // 2 - edge // 2
    box = section.maps[0][first : first + edge, first : first + edge, first : first + edge]
    np.testing.assert_array_equal(crop.data, box)
    # what a person sees: the crop alone, with its colour bar and its own limits, in view
    assert not image.visible and not section.heatmap_layer.visible
    assert crop.colorbar.visible and not section.heatmap_layer.colorbar.visible
    cropped = np.asarray(crop.data)
    expected = np.percentile(cropped[cropped > 0], [50, 99.5])
    np.testing.assert_allclose(crop.contrast_limits, expected, rtol=1e-5)
    np.testing.assert_allclose(viewer.camera.center[-2:], world[-2:], atol=1e-6)
    assert f"particle {k}" in section.crop_label.text()
    section.view_button.setChecked(True)  # in 3D the crop is rendered, not the tomogram
    assert crop.rendering == "attenuated_mip" and tomo.rendering == "minip"
    section.view_button.setChecked(False)

    # back to the whole tomogram
    section.crop_check.setChecked(False)
    assert section.crop_layer is None and crop not in viewer.layers and tomo not in viewer.layers
    assert image.visible and section.heatmap_layer.visible
    assert section.heatmap_layer.colorbar.visible


def test_markers_come_back_when_the_viewer_goes_to_a_particle(explained):
    """Grad-CAM hides the particle markers (they would cover the heatmap); Next ▶ on the
    map, a row of the prediction table or a selection on the map shows them again, so
    the viewer never centres on a particle without a marker."""
    viewer, widget, session, section, run = explained
    layer = session.particles_layer
    run([0, 1])
    assert not layer.visible
    mp = widget.population
    mp.suggestions, mp.suggestion_pos = [2, 3], -1  # what Suggest leaves
    assert mp.next_suggestion() == 2
    assert layer.visible and layer.selected_data == {2}

    run([0])
    assert not layer.visible
    widget.prediction.jump_to(3)  # a row of the prediction table
    assert layer.visible

    run([0])
    mp.select([4, 5])  # a lasso on the map
    assert layer.visible and layer.selected_data == {4, 5}

    # with predictions, the predictions layer is the one that comes back
    n = len(session.store.table)
    session.store.set_predictions(np.ones(n, np.int64), np.full(n, 0.9))
    predictions = session.show_predictions()
    run([0])
    assert not predictions.visible and not layer.visible
    session.center_on(1)
    assert predictions.visible and not layer.visible
