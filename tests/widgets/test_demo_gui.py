"""`cryossl demo --gui`: napari opens with the dock already holding the demo's session."""

from __future__ import annotations

import numpy as np

from napari_cryossl.analysis.predict import JUNK_CLASS_NAME
from napari_cryossl.cli.demo import open_in_napari, run_demo

TIMEOUT_MS = 180_000


def _wait(qtbot, worker):
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass


def test_demo_hands_its_session_to_the_dock(make_napari_viewer, qtbot, tmp_path):
    result = run_demo(
        tmp_path / "demo",
        preset="cpu",
        device="cpu",
        verbose=False,
        preset_overrides=dict(
            tomogram_shape=(32, 96, 96),
            n_particles=12,
            n_classes=2,
            box_size=16,
            pretrain_epochs=1,
            finetune_epochs=2,
            finetune_min_steps=0,
            labels_per_class=2,
            batch_size=4,
        ),
    )
    viewer, widget = open_in_napari(result, make_napari_viewer())
    session = widget.session

    # Data: the demo's tomogram, its picks, classes named after the complexes, the
    # labels the demo made, the models beside it.
    assert session.tomogram is not None
    assert session.tomogram.path.resolve() == result.files["tomogram"].resolve()
    assert [session.class_name(n) for n in session.class_numbers()] == [
        "TRiC", "apoferritin", JUNK_CLASS_NAME  # false picks get a class of their own
    ]
    table = session.store.table
    assert len(table) == result.n_picked
    assert (table["class_number"] > 0).sum() == result.n_labelled
    assert session.encoder_path == result.files["encoder"].parent / "encoder.pt"
    assert session.classifier_path == result.files["classifier"]
    assert session.particle_diameter_a == result.particle_diameter_a
    # The predictions are shown, the ground truth and the map are there to compare.
    layer = session.predictions_layer
    assert layer is not None and layer in viewer.layers and layer.visible
    assert len(layer.data) == result.n_picked
    names = [lay.name for lay in viewer.layers]
    assert "ground truth (simulated)" in names and "Grad-CAM (every particle)" in names

    # Prediction runs from the dock without any further setup.
    pr = widget.show_section("prediction")
    pr.device.setCurrentText("cpu")
    _wait(qtbot, pr.start())
    predicted = session.store.table["predicted_class"].to_numpy()
    assert set(predicted) <= {1, 2, 3} and (predicted > 0).all()

    # So does Grad-CAM of a selected particle (one not predicted junk: junk stays blank).
    sal = widget.show_section("saliency")
    sal.device.setCurrentText("cpu")
    particle = int(np.flatnonzero(predicted != 3)[0]) if (predicted != 3).any() else 0
    session.predictions_layer.selected_data = {particle}
    _wait(qtbot, sal.start())
    heat = sal.heatmap_layer
    assert heat is not None and heat in viewer.layers
    assert np.asarray(heat.data).max() > 0
