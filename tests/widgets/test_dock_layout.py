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
