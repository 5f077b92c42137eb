"""napari's responsiveness while pretraining, fine-tuning, predicting and Grad-CAM run.

A real napari viewer with the "Classify particles" dock (as the Plugins menu adds it), a
simulated tomogram and its ground-truth picks imported from a STAR file. Each step is
started from its section exactly as a click on Start does; a 10 ms QTimer ticks on the
GUI thread the whole time, and the largest gap between ticks is the longest the viewer
was frozen (target < 50 ms). Needs a display: on a headless machine run it under Xvfb.

    xvfb-run -a python benchmarks/bench_gui.py --out benchmarks/out/gui.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def settle(app, seconds: float = 1.0) -> None:
    """Run the event loop for a while: the viewer's first paint (shaders, glyphs) happens
    here, as it does on screen long before a user clicks anything, not inside a
    measured step."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _measure(app, start, label: str) -> dict:
    """Start a worker with `start()`, tick a 10 ms timer until it finishes, return gaps
    (the time `start()` itself took on the GUI thread counts as one)."""
    from qtpy.QtCore import QEventLoop, QTimer

    ticks: list[float] = []
    yields: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t_click = time.perf_counter()
    worker = start()  # what a click on Start runs on the GUI thread before the worker
    start_ms = 1000 * (time.perf_counter() - t_click)
    if worker is None:
        raise RuntimeError(f"{label}: the section refused to start (see its status line)")
    loop = QEventLoop()
    worker.yielded.connect(lambda _s: yields.append(time.perf_counter()))
    errors: list[BaseException] = []
    worker.errored.connect(errors.append)
    worker.finished.connect(loop.quit)
    t0 = time.perf_counter()
    loop.exec()
    seconds = time.perf_counter() - t0
    # let the GUI apply the last results (layers, tables), which is part of the cost
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    if errors:
        raise RuntimeError(f"{label} failed: {errors[0]!r}")
    # the click itself froze the viewer for start_ms: a gap like any other
    gaps = np.concatenate([[start_ms], np.diff(ticks) * 1000 if len(ticks) > 1 else []])
    return {
        "step": label,
        "seconds": round(seconds, 2),
        "start_ms": round(start_ms, 1),
        "max_gap_ms": round(float(gaps.max()), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "timer_ticks": len(ticks),
        "progress_updates": len(yields),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--particles", type=int, default=60)
    parser.add_argument("--box", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gui.json"))
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cryossl.io import write_mrc, write_particles
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    voxel = 10.0
    config = SimulationConfig(
        n_classes=3, box_size=args.box, voxel_size=voxel, snr=1.0, particle_diameter_a=100.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        tomo_path = Path(tmp) / "tomo.mrc"
        volume, truth = simulate_tomogram((48, 192, 192), args.particles, config, seed=1)
        write_mrc(tomo_path, volume, voxel)
        star = Path(tmp) / "truth.star"
        write_particles(truth, star, voxel_size=voxel)

        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
        assert dock.data.open_path(tomo_path)
        dock.picking.import_file(star)
        session = dock.session
        classes = session.store.table["class_number"].to_numpy()
        # keep 5 labels per class, as a user who clicked a few particles would have
        unlabel = np.concatenate([np.flatnonzero(classes == c)[5:] for c in np.unique(classes)])
        session.store.set_class(unlabel, 0)

        results = []
        pre = dock.show_section("pretrain")
        pre.probe()  # device check + training-library imports, in a worker (as on first show)
        deadline = time.perf_counter() + 120
        while pre.env is None and time.perf_counter() < deadline:
            app.processEvents()
            time.sleep(0.01)
        pre.method.setCurrentIndex(pre.method.findData("moco"))
        pre.preset.setCurrentText("rb3d-small")
        pre.box_size.setValue(args.box)
        for section in (pre, dock.finetune):
            section.epochs.setValue(args.epochs)
            section.batch_size.setValue(8)
            if hasattr(section, "min_steps"):
                section.min_steps.setValue(0)
            section.device.setCurrentText("cpu")
        results.append(_measure(app, pre.start, "pretrain (MoCo)"))
        ft = dock.show_section("finetune")
        results.append(_measure(app, ft.start, "fine-tune"))
        pr = dock.show_section("prediction")
        pr.device.setCurrentText("cpu")
        results.append(_measure(app, pr.start, "predict"))
        results.append(_measure(app, pr.start, "predict again (layer exists)"))
        sal = dock.show_section("saliency")
        sal.device.setCurrentText("cpu")
        session.predictions_layer.selected_data = set(range(min(10, len(classes))))
        results.append(_measure(app, sal.start, "Grad-CAM"))
        results.append(_measure(app, sal.start, "Grad-CAM again (layer exists)"))
        viewer.close()

    import torch

    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "napari": napari.__version__,
        "settings": vars(args) | {"out": str(args.out)},
        "steps": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print("| step | s | largest gap (ms) | 99th percentile (ms) | progress updates |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['step']} | {r['seconds']} | {r['max_gap_ms']} | {r['p99_gap_ms']} "
            f"| {r['progress_updates']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
