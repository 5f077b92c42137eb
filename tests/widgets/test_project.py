"""Several tomograms in one session (a project), in a real viewer: labels on both, one
fine-tune over both, predictions written into each tomogram's own autosaved store."""

from __future__ import annotations

import numpy as np

from napari_cryossl.particles.annotations import AnnotationStore

TIMEOUT_MS = 180_000


def _second_tomogram(tmp_path):
    """Another simulated tomogram (another seed, fewer particles) in its own folder."""
    from napari_cryossl.io import write_mrc
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=10.0, snr=1.0, particle_diameter_a=100.0
    )
    volume, truth = simulate_tomogram((32, 96, 96), 8, config, seed=7)
    path = tmp_path / "data2" / "other.mrc"
    path.parent.mkdir()
    write_mrc(path, volume, 10.0)
    return path, truth


def _import_and_label(widget, path, truth, per_class=2):
    """Show `path`, import its ground-truth picks and keep `per_class` labels per class."""
    from napari_cryossl.io import write_particles

    assert widget.data.switch_to(path)
    session = widget.session
    assert session.is_current(path)
    star = path.with_name(path.stem + "_truth.star")
    write_particles(truth, star, voxel_size=10.0)
    widget.picking.import_file(star)
    classes = session.store.table["class_number"].to_numpy()
    unlabel = np.concatenate([np.flatnonzero(classes == c)[per_class:] for c in (1, 2)])
    session.store.set_class(unlabel, 0)
    return session.store.table["class_number"].to_numpy().copy()


def _wait(qtbot, worker):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass


def test_two_tomograms_label_finetune_once_predict_both(dock, tomogram, truth, tmp_path, qtbot):
    other, other_truth = _second_tomogram(tmp_path)
    viewer, widget = dock()
    session = widget.session
    assert widget.data.open_path(tomogram)  # opening a tomogram makes it the project's first
    assert session.project == [tomogram.resolve()]
    assert not widget.finetune.all_tomograms.all_tomograms()
    assert widget.data.add_paths([other, tomogram]) == 1  # each tomogram once
    assert session.project == [tomogram.resolve(), other.resolve()]
    assert widget.data.project_list.count() == 2
    assert session.is_current(tomogram)  # adding does not switch
    for section in (widget.pretrain, widget.finetune, widget.prediction):
        assert section.all_tomograms.all_tomograms()  # on by default with two tomograms

    # labels on both; each tomogram keeps its own, autosaved beside it
    labels = {
        tomogram: _import_and_label(widget, tomogram, truth),
        other: _import_and_label(widget, other, other_truth),
    }
    assert session.is_current(other)
    assert len(session.store.table) == len(other_truth)
    first = AnnotationStore.for_tomogram(tomogram).table
    assert len(first) == len(truth)
    np.testing.assert_array_equal(first["class_number"].to_numpy(), labels[tomogram])
    rows = [widget.data.project_list.item(i).text() for i in range(2)]
    assert f"{len(truth)} particles, 4 labelled" in rows[0]
    assert f"{len(other_truth)} particles, 4 labelled" in rows[1] and rows[1].startswith("▶")

    # one fine-tune on the labels of both tomograms
    ft = widget.show_section("finetune")
    assert "in 2 tomograms" in ft.labels_label.text() and "class 1: 4" in ft.labels_label.text()
    # semi-supervised would also learn from the unlabelled particles of both
    assert "unlabelled" not in ft.labels_label.text()
    ft.semi_supervised.setChecked(True)
    n_unlabelled = sum(int((v == 0).sum()) for v in labels.values())
    assert f"pseudo-labels): {n_unlabelled}" in ft.labels_label.text()
    assert "class 1: 4" in ft.labels_label.text()
    ft.semi_supervised.setChecked(False)
    ft.epochs.setValue(1)
    ft.batch_size.setValue(4)
    ft.min_steps.setValue(0)
    ft.device.setCurrentText("cpu")
    _wait(qtbot, ft.start())
    assert session.classifier_path is not None and session.classifier_path.is_file()
    assert "classifier saved" in ft.status.text()

    # predictions on both, each into its own store
    pr = widget.show_section("prediction")
    pr.device.setCurrentText("cpu")
    _wait(qtbot, pr.start())
    assert "in 2 tomograms" in pr.status.text(), pr.status.text()
    classifier = session.classifier_path
    for path, n in ((tomogram, len(truth)), (other, len(other_truth))):
        assert widget.data.switch_to(path)
        assert session.classifier_path == classifier  # the model stays across switches
        table = session.store.table
        assert len(table) == n
        assert (table["predicted_class"].to_numpy() > 0).all()
        assert np.isfinite(table["probability"].to_numpy()).all()
        np.testing.assert_array_equal(table["class_number"].to_numpy(), labels[path])
        layer = session.predictions_layer
        assert layer is not None and layer in viewer.layers and len(layer.data) == n
        assert session.image_layer.visible
        # autosaved: a fresh read of the file has them too
        saved = AnnotationStore.for_tomogram(path).table
        assert (saved["predicted_class"].to_numpy() > 0).all()
    shown = [layer for layer in viewer.layers if layer.metadata.get("napari_cryossl") == "tomogram"]
    assert sum(layer.visible for layer in shown) == 1


def test_add_folder_and_tomograms_star(dock, tomogram, tmp_path):
    from napari_cryossl.io import RelionTomogram, open_tomogram, write_tomograms_star

    viewer, widget = dock()
    session = widget.session
    # a folder: every tomogram file in it (not its annotations or other files)
    (tomogram.parent / "notes.txt").write_text("x")
    assert widget.data.add_folder(tomogram.parent) == 1
    assert session.project == [tomogram.resolve()] and session.is_current(tomogram)
    assert widget.data.add_folder(tmp_path / "nowhere") == 0
    assert widget.data.status.is_error
    assert widget.data.add_paths([tomogram.parent / "notes.txt"]) == 0
    assert "not a tomogram file" in widget.data.status.text()

    other, _ = _second_tomogram(tmp_path)
    star = tmp_path / "tomograms.star"
    records = [
        RelionTomogram.from_tomogram(open_tomogram(p), name=p.stem) for p in (tomogram, other)
    ]
    write_tomograms_star(records, star)
    assert widget.data.add_tomograms_star(star) == 1
    assert session.project == [tomogram.resolve(), other.resolve()]
    assert widget.data.project_list.count() == 2


def test_resume_keeps_the_tomograms_the_run_started_with(
    dock, tomogram, truth, tmp_path, qtbot, run_briefly
):
    """A fine-tuning run started on all tomograms, cancelled, then resumed after "All
    tomograms" was switched off continues on the particles of both (its saved split numbers
    them) instead of failing with "the labelled particles have changed"."""
    from napari_cryossl.nn.checkpoints import load_checkpoint

    other, other_truth = _second_tomogram(tmp_path)
    viewer, widget = dock()
    session = widget.session
    assert widget.data.open_path(tomogram)
    assert widget.data.add_paths([other]) == 1
    for path, path_truth in ((tomogram, truth), (other, other_truth)):
        _import_and_label(widget, path, path_truth, per_class=3)
    ft = widget.show_section("finetune")
    assert ft.all_tomograms.all_tomograms()
    ft.epochs.setValue(200)
    ft.batch_size.setValue(4)
    ft.min_steps.setValue(0)
    ft.device.setCurrentText("cpu")
    worker = ft.start()
    with qtbot.waitSignal(worker.yielded, timeout=TIMEOUT_MS):
        pass
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=TIMEOUT_MS):
        ft.panel.cancel_button.click()
    started = load_checkpoint(session.work_dir / "classifier.last.pt", kind="classifier")
    n_rows = sum(len(v) for v in started["split"].values() if isinstance(v, list))

    ft.all_tomograms.setChecked(False)
    errors, statuses = run_briefly(ft, resume=True)
    assert not errors and not ft.status.is_error, ft.status.text()
    assert statuses, "the resumed run reported no progress"
    resumed = load_checkpoint(session.work_dir / "classifier.last.pt", kind="classifier")
    assert sum(len(v) for v in resumed["split"].values() if isinstance(v, list)) == n_rows
    labelled = [int((AnnotationStore.for_tomogram(p).table["class_number"] > 0).sum())
                for p in (tomogram, other)]
    assert min(labelled) > 0 and n_rows == sum(labelled)  # both tomograms' labels
