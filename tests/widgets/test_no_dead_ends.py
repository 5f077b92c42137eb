"""A user mistake in the dock is a message in its section, never a traceback."""

from __future__ import annotations

from napari_cryossl.io import particle_zyx


def test_predict_without_classes_says_why_and_is_ready_once_classes_exist(dock, tomogram, truth):
    from napari.utils.notifications import notification_manager

    _viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    session = widget.session
    session.add_particles(particle_zyx(truth))  # picked, no classes defined yet
    # A classifier found beside the tomogram (as after an earlier session) does not
    # make Predict usable without classes.
    session.use_classifier(session.work_dir / "classifier.pt")
    session.classifier_path.write_bytes(b"")

    pr = widget.show_section("prediction")
    assert not pr.panel.start_button.isEnabled()
    assert "no classes yet" in pr.panel.start_button.toolTip()
    assert "none yet" in widget.labelling.current_label.text()

    before = len(notification_manager.records)
    assert pr.start() is None  # refused at once: nothing computed
    assert "no classes yet" in pr.status.text() and "step 3" in pr.status.text()
    new = notification_manager.records[before:]
    assert new and all(getattr(n, "exception", None) is None for n in new)  # no traceback
    assert pr.worker is None and pr.panel.progress.format() != "predicting"

    session.store.add_class("ribosome")
    session.store.add_class("proteasome")
    assert pr.panel.start_button.isEnabled()
    assert "ribosome" in widget.labelling.current_label.text()
