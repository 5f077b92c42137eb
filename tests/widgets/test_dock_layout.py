"""The dock fits its sections: no button cut off at the right edge."""

from __future__ import annotations

from napari_cryossl._widgets._common import enclosing_scroll_area
from napari_cryossl._widgets.main import SECTIONS


def test_every_section_fits_the_docks_width_without_a_horizontal_scroll_bar(
    make_napari_viewer, qtbot
):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    for attr, title, _cls in SECTIONS:
        section = dock.show_section(attr)
        qtbot.wait(50)  # the layout settles, the scroll bars follow
        area = enclosing_scroll_area(section)
        assert area is not None
        assert section.minimumSizeHint().width() <= area.viewport().width(), title
        assert area.horizontalScrollBar().maximum() == 0, title  # nothing hidden at the right
    # fine-tuning's semi-supervised settings, shown only while switched on, fit too
    section = dock.show_section("finetune")
    section.semi_supervised.setChecked(True)
    qtbot.wait(50)
    area = enclosing_scroll_area(section)
    assert section.minimumSizeHint().width() <= area.viewport().width()
    assert area.horizontalScrollBar().maximum() == 0


def _fits(section) -> tuple[int, int, int, int]:
    """(minimumSizeHint, sizeHint, viewport width, horizontal scroll range) of a section."""
    area = enclosing_scroll_area(section)
    return (section.minimumSizeHint().width(), section.sizeHint().width(),
            area.viewport().width(), area.horizontalScrollBar().maximum())


def test_the_map_section_fits_the_dock_after_suggest_and_next(
    make_napari_viewer, qtbot, tomogram, truth, tmp_path
):
    """Suggest and Next ▶ write long lines into the Map section: they wrap, and the
    buttons and combo boxes stay inside the dock at every step (no sideways scrolling)."""
    from napari_cryossl.io import write_particles

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    assert dock.data.open_path(tomogram)
    star = tmp_path / "picks.star"
    unlabelled = truth.copy()
    unlabelled["class_number"] = 0
    write_particles(unlabelled, star, voxel_size=10.0)
    dock.picking.import_file(star)
    section = dock.show_section("population")
    section.device.setCurrentText("cpu")
    section.n_clusters.setValue(2)

    def check(step: str) -> None:
        qtbot.wait(50)  # the layout settles, the scroll bars follow
        minimum, hint, viewport, scroll = _fits(section)
        assert minimum <= viewport, (step, minimum, viewport)
        assert hint <= viewport, (step, hint, viewport)
        assert scroll == 0, step
        for button in (section.next_button, section.suggest_button, section.panel.cancel_button,
                       section.suggest_strategy, section.color_by, section.select_mode):
            right = button.mapTo(section, button.rect().topRight()).x()
            assert right <= viewport, (step, button.objectName() or button.text(), right)

    check("before the map")
    with qtbot.waitSignal(section.start().finished, timeout=120_000):
        pass
    check("map")
    with qtbot.waitSignal(section.suggest(3).finished, timeout=120_000):
        pass
    assert section.suggestions, section.status.text()
    check("suggest")
    section.next_suggestion()
    check("next")
    assert "suggestion 2/" in section.suggestion_label.text()
