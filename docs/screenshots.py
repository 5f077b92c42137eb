"""Drive the real napari-cryossl widgets through the whole workflow and save screenshots.

Run under a display (or Xvfb):

    xvfb-run -a python docs/screenshots.py [--out docs/img] [--fast]

It opens the sample data (File ▸ Open Sample), then uses each section of the dock the
way a person would (the same widget methods the buttons call): open the tomogram, preview
and accept DoG picks, define classes and label a few particles per class (the sample's
ground truth stands in for the person's eye), pretrain, fine-tune, predict, Grad-CAM in
2D and 3D, and export. After each step it saves ``gui_<step>.png`` (the whole window:
canvas and dock). docs/gui.md shows these pictures. Nothing here tunes contrast or
rendering: the pictures show what the plugin itself shows. About 2-4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW_SIZE = (1500, 950)


def pump(seconds: float = 0.3) -> None:
    """Let Qt run for `seconds` (layers draw, signals arrive), as a person's pause would."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait(worker, what: str, why: str = "see the message in the dock") -> None:
    """Run the event loop until `worker` finishes, then print how long it took."""
    from qtpy.QtCore import QEventLoop

    if worker is None:
        raise RuntimeError(f"{what} did not start ({why})")
    t0 = time.perf_counter()
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    loop.exec()
    pump(0.5)
    print(f"  {what}: {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "img", help="folder for gui_*.png")
    parser.add_argument("--fast", action="store_true", help="1 epoch each (checks the script)")
    parser.add_argument("--labels-per-class", type=int, default=6)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # The sample and the annotations go to a scratch folder, so the pictures never depend
    # on (or change) the user's own sample cache.
    work = Path(tempfile.mkdtemp(prefix="cryossl-screenshots-"))
    os.environ["NAPARI_CRYOSSL_SAMPLE_DIR"] = str(work / "sample")

    import napari

    from napari_cryossl._sample_data import SAMPLE_DIAMETER_A
    from napari_cryossl._widgets._common import enclosing_scroll_area
    from napari_cryossl.cli.demo import match_picks
    from napari_cryossl.io import particle_zyx
    from napari_cryossl.simulate import class_names

    viewer = napari.Viewer(title="napari-cryossl", show=True)
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    session = dock.session

    def shot(name: str, section: str | None = None) -> None:
        if section is not None:
            dock.show_section(section)
        pump(0.5)
        path = args.out / f"gui_{name}.png"
        image = viewer.screenshot(canvas_only=False, flash=False)
        from imageio.v3 import imwrite

        imwrite(path, image)
        print(f"  wrote {path}", flush=True)

    # 1. Data: the sample, opened in the workflow -------------------------------------------
    print("1. data", flush=True)
    _, truth_layer = viewer.open_sample("napari-cryossl", "crowded_tomogram")
    dock.data.use_layer(session.image_layer or viewer.layers[0])
    mid = session.tomogram.shape[0] // 2
    viewer.dims.set_point(0, mid * session.voxel_size)
    viewer.reset_view()
    shot("data", "data")

    # 2. Picking: DoG preview, then accept ---------------------------------------------------
    print("2. picking", flush=True)
    picking = dock.show_section("picking")
    picking.diameter.setValue(SAMPLE_DIAMETER_A)
    picking.threshold.setValue(5.0)  # stricter than the default: what the preview is for
    wait(picking.preview(), "DoG picking")
    shot("picking_preview")
    picking.accept()

    # 3. Labelling: classes named as the simulator's, a few labels per class ---------------
    print("3. labelling", flush=True)
    labelling = dock.show_section("labelling")
    n_classes = int(truth_layer.features["class_number"].max())
    for name in class_names(n_classes):
        labelling.add_class(name)
    picks = particle_zyx(session.store.table)
    match = match_picks(
        truth_layer.data, picks, radius=0.5 * SAMPLE_DIAMETER_A / session.voxel_size
    )
    true_class = np.where(
        match >= 0, truth_layer.features["class_number"].to_numpy()[np.maximum(match, 0)], 0
    )
    rng = np.random.default_rng(0)
    for c in range(1, n_classes + 1):
        candidates = np.flatnonzero(true_class == c)
        chosen = rng.choice(
            candidates, size=min(args.labels_per_class, len(candidates)), replace=False
        )
        session.set_current_class(c)
        session.label_particles(chosen)  # what clicking each of them does
    session.set_current_class(1)
    labelling.set_label_on_click(True)
    shot("labelling")
    labelling.set_label_on_click(False)

    # 4. Pretraining (MoCo) on every pick ------------------------------------------------------
    print("4. pretraining", flush=True)
    pre = dock.show_section("pretrain")
    wait(pre.probe(), "device check")
    pre.method.setCurrentIndex(pre.method.findData("moco"))
    pre.preset.setCurrentText("rb3d-small")
    pre.epochs.setValue(1 if args.fast else 8)
    pre.batch_size.setValue(16)
    wait(pre.start(), "pretraining")
    shot("pretraining")

    # 5. The map: every pick embedded by the new encoder, coloured by label; a cluster's gallery
    print("5. map", flush=True)
    mp = dock.show_section("population")
    mp.n_clusters.setValue(n_classes)
    wait(mp.start(), "map")
    mp.color_by.setCurrentText("labels")
    shot("map")
    # Suggest, then Next ▶: the viewer goes to the second suggestion; the section must
    # still fit the dock (nothing cut off at the right)
    wait(mp.suggest(), "suggestions")
    mp.next_suggestion()
    area = enclosing_scroll_area(mp)
    if area is not None:
        pump(0.3)
        area.ensureWidgetVisible(mp.suggestion_label)
    shot("map_suggest")
    mp.color_by.setCurrentText("clusters")
    biggest = int(np.bincount(mp.clusters[mp.clusters > 0]).argmax())
    mp.select(np.flatnonzero(mp.clusters == biggest))
    mp.show_gallery()
    area = enclosing_scroll_area(mp)
    if area is not None:
        pump(0.3)
        area.ensureWidgetVisible(mp.gallery)
    shot("gallery")
    mp.color_by.setCurrentText("labels")

    # 6. Fine-tuning on the labels --------------------------------------------------------------
    print("6. fine-tuning", flush=True)
    ft = dock.show_section("finetune")
    ft.epochs.setValue(1 if args.fast else 30)
    ft.batch_size.setValue(8)
    wait(ft.start(), "fine-tuning")
    shot("finetuning")

    # 7. Prediction ---------------------------------------------------------------------------
    print("7. prediction", flush=True)
    pr = dock.show_section("prediction")
    wait(pr.start(), "prediction")
    correct = (session.store.table["predicted_class"].to_numpy() == true_class)[true_class > 0]
    print(f"  accuracy on matched picks (sample ground truth): {correct.mean():.1%}", flush=True)
    truth_layer.visible = False
    shot("prediction")

    # 8. Grad-CAM: the most confident particle alone (a crop centred on it, in 3D), then
    # all particles in 2D and 3D. Contrast, colour bar and rendering are the plugin's own.
    print("8. saliency", flush=True)
    sal = dock.show_section("saliency")
    target = int(np.argmax(session.store.table["probability"].to_numpy()))
    pr.jump_to(target)
    wait(sal.start(indices=[target]), "Grad-CAM")
    sal.crop_check.setChecked(True)
    sal.view_button.setChecked(True)
    viewer.camera.angles = (10, -25, 70)
    shot("saliency_crop", "saliency")
    sal.view_button.setChecked(False)
    sal.crop_check.setChecked(False)
    sal.scope.setCurrentIndex(sal.scope.findData("all"))
    wait(sal.start(), "Grad-CAM (all particles)")
    viewer.reset_view()
    shot("saliency")
    sal.view_button.setChecked(True)
    viewer.reset_view()
    viewer.camera.angles = (10, -25, 70)
    shot("saliency_3d")
    sal.view_button.setChecked(False)
    session.predictions_layer.visible = True

    # 9. Export ------------------------------------------------------------------------------------
    print("9. export", flush=True)
    sal.heatmap_layer.visible = False
    ex = dock.show_section("export")
    n = ex.export(work / "particles.star")
    print(f"  exported {n} particles to {work / 'particles.star'}", flush=True)
    viewer.reset_view()
    shot("export")

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
