"""Find more like these in the Picking section: save docs/img/gui_find_more.png.

Opens the sample tomogram (File ▸ Open Sample, four classes), labels a few particles of
each class from the sample's ground truth (standing in for the person's clicks), presses
*Find more like these* with the default number of steps and saves the window: the
picker's heatmap over the tomogram, its picks coloured by class, the section with its
score slider. Needs a display (or Xvfb); about five minutes on a 2-core CPU:

    xvfb-run -a python docs/screenshot_find_more.py [--out docs/img] [--labels-per-class 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "img", help="folder for the picture")
    parser.add_argument("--labels-per-class", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: the picker's own")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cryossl-find-more-shot-"))
    os.environ["NAPARI_CRYOSSL_SAMPLE_DIR"] = str(work / "sample")

    import napari
    from imageio.v3 import imwrite
    from screenshots import pump, wait  # docs/screenshots.py, beside this script

    from napari_cryossl._sample_data import SAMPLE_DIAMETER_A
    from napari_cryossl._widgets._common import enclosing_scroll_area
    from napari_cryossl.simulate import class_names

    viewer = napari.Viewer(title="napari-cryossl", show=True)
    viewer.window._qt_window.resize(1500, 950)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    session = dock.session

    _, truth_layer = viewer.open_sample("napari-cryossl", "crowded_tomogram")
    dock.data.use_layer(session.image_layer or viewer.layers[0])
    truth_layer.visible = False
    classes = truth_layer.features["class_number"].to_numpy()
    for name in class_names(int(classes.max())):
        session.store.add_class(name)
    for number in range(1, int(classes.max()) + 1):
        rows = (classes == number).nonzero()[0][: args.labels_per_class]
        session.add_particles(truth_layer.data[rows], class_number=number)

    picking = dock.show_section("picking")
    picking.diameter.setValue(SAMPLE_DIAMETER_A)
    section = picking.find_more
    if args.steps:
        section.steps.setValue(args.steps)
    warm = section.warm_up()
    if warm is not None:
        wait(warm, "loading torch and MONAI")
    worker = section.start()
    wait(worker, "find more like these", why=section.status.text())
    print(f"  {section.status.text()}", flush=True)
    if section.picks_layer is not None:
        predicted = section.picks_layer.features["class_number"].value_counts().sort_index()
        print(f"  picks per predicted class: {predicted.to_dict()}", flush=True)
    viewer.dims.set_point(0, session.tomogram.shape[0] // 2 * session.voxel_size)
    viewer.reset_view()
    area = enclosing_scroll_area(section)
    if area is not None:
        area.ensureWidgetVisible(section.status)
    pump(0.8)
    out = args.out / "gui_find_more.png"
    imwrite(out, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
