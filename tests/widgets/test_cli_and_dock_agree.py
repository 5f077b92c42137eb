"""The CLI and the dock run the same operations: on the same tomogram, picks and
classifier they give the same predictions, Grad-CAM heatmaps and embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl.cli import main
from napari_cryossl.io import particle_zyx, read_mrc, read_particles, write_particles

TIMEOUT_MS = 180_000


def _wait(qtbot, worker):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass


@pytest.mark.slow
def test_predict_gradcam_and_embed_agree_between_cli_and_dock(dock, tomogram, truth, qtbot):
    folder = tomogram.parent
    picks = folder / "picks.star"
    write_particles(truth, picks, voxel_size=10.0)
    classifier = folder / "classifier.pt"
    # a 16^3 classifier: neither command below is told the box size
    assert main(["finetune", str(picks), "--tomogram", str(tomogram), "--box-size", "16",
                 "--out", str(classifier), "--epochs", "2", "--batch-size", "4",
                 "--device", "cpu"]) == 0

    # the command line
    assert main(["predict", str(classifier), str(picks), "--tomogram", str(tomogram),
                 "--out", str(folder / "predicted.star"), "--device", "cpu"]) == 0
    assert main(["gradcam", str(classifier), str(picks), "--tomogram", str(tomogram),
                 "--out", str(folder / "heat"), "--device", "cpu"]) == 0
    assert main(["embed", str(classifier), str(picks), "--tomogram", str(tomogram),
                 "--out", str(folder / "map.star"), "--device", "cpu", "--map", "pca"]) == 0
    cli_pred = read_particles(folder / "predicted.star")
    (heat_file,) = sorted((folder / "heat").glob("*.mrc"))
    cli_heat, _voxel = read_mrc(heat_file)
    cli_embeddings = np.load(folder / "map.npy")

    # the dock, on the same files
    viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    assert widget.picking.import_file(picks) == len(truth)
    session = widget.session
    session.use_classifier(classifier)

    pr = widget.show_section("prediction")
    pr.device.setCurrentText("cpu")
    _wait(qtbot, pr.start())
    table = session.store.table
    # the store keeps its own row order: pair its rows with the file's by position
    order = [
        int(np.argmin(np.linalg.norm(particle_zyx(cli_pred) - p, axis=1)))
        for p in particle_zyx(table)
    ]
    assert sorted(order) == list(range(len(cli_pred)))
    np.testing.assert_array_equal(
        table["predicted_class"].to_numpy(), cli_pred["class_number"].to_numpy()[order]
    )
    np.testing.assert_allclose(
        table["probability"].to_numpy(), cli_pred["probability"].to_numpy()[order], atol=1e-5
    )

    sal = widget.show_section("saliency")
    sal.device.setCurrentText("cpu")
    _wait(qtbot, sal.start(np.arange(len(table))))
    block = np.asarray(sal.heatmap_layer.data)
    start = np.round(
        (np.asarray(sal.heatmap_layer.translate) - np.asarray(session.image_layer.translate))
        / np.asarray(sal.heatmap_layer.scale)
    ).astype(int)
    region = tuple(slice(s, s + n) for s, n in zip(start, block.shape, strict=True))
    assert block.max() > 0
    np.testing.assert_allclose(block, np.asarray(cli_heat)[region], atol=1e-5)

    section = widget.show_section("population")
    section.device.setCurrentText("cpu")
    section.map_method.setCurrentText("pca")
    _wait(qtbot, section.start())
    np.testing.assert_allclose(section.embeddings, cli_embeddings[order], atol=1e-4)
