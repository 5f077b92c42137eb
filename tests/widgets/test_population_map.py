"""Section 5, the map: lasso labelling, undo, clusters, instant predictions, clicks that
move the viewer, suggestions and the gallery, in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backend_bases import MouseEvent

from napari_cryossl.io import particle_zyx, write_particles

TIMEOUT_MS = 120_000


def _mouse(canvas, kind: str, xy_data, button=1) -> None:
    """A matplotlib mouse event at a map position, through the canvas's own dispatch
    (what the Qt canvas sends the lasso and rectangle selectors)."""
    x, y = canvas.axes.transData.transform(np.asarray(xy_data, dtype=float))
    MouseEvent(kind, canvas, x, y, button=button)._process()


def _drag(canvas, path) -> None:
    _mouse(canvas, "button_press_event", path[0])
    for xy in path[1:]:
        _mouse(canvas, "motion_notify_event", xy)
    _mouse(canvas, "button_release_event", path[-1])


def _mapped(dock, tomogram, truth, tmp_path, qtbot):
    viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    star = tmp_path / "picks.star"
    unlabelled = truth.copy()
    unlabelled["class_number"] = 0
    write_particles(unlabelled, star, voxel_size=10.0)
    assert widget.picking.import_file(star) == len(truth)
    session = widget.session
    for name in ("A", "B"):
        session.store.add_class(name)
    section = widget.show_section("population")
    section.device.setCurrentText("cpu")
    section.n_clusters.setValue(2)
    worker = section.start()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    assert section.coords is not None, section.status.text()
    return viewer, widget, session, section


def test_lasso_labels_the_particles_inside_and_undo_restores(dock, tomogram, truth, tmp_path, qtbot):
    viewer, widget, session, section = _mapped(dock, tomogram, truth, tmp_path, qtbot)
    canvas = section.canvas
    xy = section.coords
    n = len(xy)
    assert n == len(truth) and section.embeddings.shape[0] == n
    assert "random weights" in section.status.text()  # no encoder yet: said so
    # the new map is painted: every particle a point with its colour (unlabelled: grey)
    assert len(canvas.points.get_offsets()) == n
    assert len(canvas.points.get_facecolors()) == n

    # a lasso around the left half of the map (by x), drawn on the canvas
    x_cut = float(np.median(xy[:, 0]))
    (x0, x1), (y0, y1) = canvas.axes.get_xlim(), canvas.axes.get_ylim()
    lo = (x0 + 0.01 * (x1 - x0), y0 + 0.01 * (y1 - y0))  # inside the axes, around all points
    hi = (x1, y1 - 0.01 * (y1 - y0))
    path = [(lo[0], lo[1]), (x_cut, lo[1]), (x_cut, hi[1]), (lo[0], hi[1]), (lo[0], lo[1])]
    _drag(canvas, path)
    inside = np.flatnonzero(xy[:, 0] < x_cut)
    assert len(inside) > 0
    np.testing.assert_array_equal(section.selection, inside)
    assert session.particles_layer.selected_data == set(inside.tolist())

    session.set_current_class(2)
    assert section.label_selection() == len(inside)
    labels = session.store.table["class_number"].to_numpy()
    assert (labels[inside] == 2).all() and (np.delete(labels, inside) == 0).all()
    # saved through the annotation store: a fresh read of its file has them
    from napari_cryossl.particles.annotations import AnnotationStore

    again = AnnotationStore.for_tomogram(session.tomogram.path)
    assert (again.table["class_number"].to_numpy()[inside] == 2).all()

    section.undo()
    assert (session.store.table["class_number"].to_numpy() == 0).all()


def test_instant_predictions_follow_each_label_and_clicks_move_the_viewer(
    dock, tomogram, truth, tmp_path, qtbot
):
    viewer, widget, session, section = _mapped(dock, tomogram, truth, tmp_path, qtbot)
    true_class = truth["class_number"].to_numpy()
    table = session.store.table
    # match store rows to the truth by position
    order = [
        int(np.argmin(np.linalg.norm(particle_zyx(truth) - p, axis=1)))
        for p in particle_zyx(table)
    ]
    cls = true_class[order]
    first = [int(np.flatnonzero(cls == c)[0]) for c in (1, 2)]
    # the classifier's predictions (as the Prediction section leaves them), saved to disk
    n = len(table)
    classifier_classes = np.full(n, 2, dtype=np.int64)
    classifier_prob = np.linspace(0.5, 0.9, n)
    session.store.set_predictions(classifier_classes, classifier_prob)
    session.label_particles([first[0]], 1)
    assert section.instant_predictions is None  # one class labelled: nothing to predict yet
    session.label_particles([first[1]], 2)  # the second class: instant predictions
    predicted, _prob = section.instant_predictions
    assert (predicted > 0).all()
    assert predicted[first[0]] == 1 and predicted[first[1]] == 2
    # ... which never replace the classifier's, in the table or in the saved file
    np.testing.assert_array_equal(
        session.store.table["predicted_class"].to_numpy(), classifier_classes
    )
    np.testing.assert_allclose(session.store.table["probability"].to_numpy(), classifier_prob)
    from napari_cryossl.particles.annotation_file import _load

    reread, _classes = _load(session.store.path)  # what is saved (autosaved on every change)
    np.testing.assert_array_equal(reread["predicted_class"].to_numpy(), classifier_classes)
    np.testing.assert_allclose(reread["probability"].to_numpy(), classifier_prob)
    section.color_by.setCurrentText("instant predictions")
    colours = section._colors()
    assert colours.shape == (n, 4) and np.isfinite(colours).all()

    # a click on a map point centres the viewer on that particle
    target = int(np.flatnonzero(np.arange(len(table)) != first[0])[0])
    _mouse(section.canvas, "button_press_event", section.coords[target])
    _mouse(section.canvas, "button_release_event", section.coords[target])
    world = session.particles_layer.data_to_world(particle_zyx(session.store.table)[target])
    np.testing.assert_allclose(viewer.dims.point[0], world[0], atol=session.voxel_size)
    assert session.particles_layer.selected_data == {target}

    # suggestions: unlabelled particles only; Next steps the viewer through them
    worker = section.suggest(3)  # in the helper process, off the GUI thread
    assert worker is not None and not section.suggest_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    suggested = section.suggestions
    assert section.suggest_button.isEnabled()
    labels = session.store.table["class_number"].to_numpy()
    assert suggested and all(labels[i] == 0 for i in suggested)
    assert section.suggestion_pos == 0  # the viewer went to the first
    assert section.next_suggestion() == suggested[1 % len(suggested)]
    # the chosen strategy is the one used (the same rows the core gives)
    from napari_cryossl.analysis.population import suggest

    section.suggest_strategy.setCurrentText("margin")
    worker = section.suggest(3)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    expected = suggest(section.embeddings, labels, 3, strategy="margin")
    assert section.suggestions == [int(i) for i in expected]

    # a cluster becomes a class; the gallery shows the chosen particles
    number = section.class_from_cluster(1)
    members = np.flatnonzero(section.clusters == 1)
    assert number in session.class_numbers()
    assert (session.store.table["class_number"].to_numpy()[members] == number).all()
    assert section.show_gallery(members) == min(len(members), 48)
    assert section.gallery_grid.count() == min(len(members), 48)


def test_the_map_is_dropped_when_particles_change(dock, tomogram, truth, tmp_path, qtbot):
    viewer, widget, session, section = _mapped(dock, tomogram, truth, tmp_path, qtbot)
    session.store.remove_particles([0])
    assert section.coords is None
    assert "compute the map again" in section.status.text()
    assert not section.label_button.isEnabled()


def test_a_large_map_shows_every_particle_in_its_colour_and_the_lasso_still_selects(qtbot):
    """From `_MANY_POINTS` on, the map draws grouped dots (fast) instead of a scatter:
    every particle is still drawn once, in its colour, and a lasso selects the same ones."""
    from napari_cryossl._widgets._map_canvas import _MANY_POINTS, MapCanvas

    canvas = MapCanvas()
    qtbot.addWidget(canvas)
    n = _MANY_POINTS + 500
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(n, 2))
    palette = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.75]])
    kind = rng.integers(0, 3, n)
    canvas.set_points(xy, palette[kind])
    canvas.draw()
    drawn = {}
    for line in canvas.dots:
        x, y = line.get_data()
        rgba = tuple(np.round(np.asarray(line.get_color(), float), 3))
        drawn[rgba] = drawn.get(rgba, 0) + len(x)
        assert line.get_alpha() is None or line.get_alpha() == pytest.approx(rgba[3])
    assert sum(drawn.values()) == n
    assert drawn == {tuple(c): int((kind == k).sum()) for k, c in enumerate(palette)}
    assert len(canvas.points.get_offsets()) == 0  # the scatter stays empty
    square = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    inside = canvas.select_polygon(square)
    expected = np.flatnonzero((np.abs(xy) < 1).all(axis=1))
    assert set(inside.tolist()) == set(expected.tolist()) and len(expected) > 100
    # recolouring regroups: all red now
    canvas.set_colors(np.tile(palette[1], (n, 1)))
    assert len(canvas.dots) == 1 and len(canvas.dots[0].get_data()[0]) == n


def test_the_map_is_computed_in_a_helper_process_that_closing_the_dock_stops(
    dock, tomogram, truth, tmp_path, qtbot
):
    """UMAP's numba code and HDBSCAN hold the GIL for long stretches: the dock runs them in
    a helper process (kept warm between maps), which must not outlive the dock."""
    viewer, widget, session, section = _mapped(dock, tomogram, truth, tmp_path, qtbot)
    process = section.helper._process
    assert process is not None and process.is_alive()
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    qtbot.waitUntil(lambda: not process.is_alive(), timeout=10_000)
