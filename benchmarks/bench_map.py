"""The population map at scale: 10,000 particles.

Core (no GUI): the 2D map (UMAP with umap-learn, and PCA), the clusters (HDBSCAN and
k-means) and the instant classifier (fit on the labels, predict every particle) on
10,000 embeddings of the size rb3d-small gives (its ``feature_dim``), drawn as 10
Gaussian groups so that the work is like a real population's.

GUI: a real napari viewer with the dock; a noise tomogram with 10,000 picks (the map's
cost does not depend on what the boxes hold); "Compute map" pressed as a click does it
(random weights, 16^3 boxes), while a 10 ms QTimer ticks on the GUI thread: the largest
gap between ticks is the longest the viewer froze (target < 50 ms). Then one label on
the map with the instant classifier on (a store write, a refit and a redraw of 10,000
points) and a recolouring, timed on the GUI thread.

    xvfb-run -a python benchmarks/bench_map.py --out benchmarks/out/map.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _fresh_process_umap(x: np.ndarray) -> float:
    """Seconds from a new Python process's start to its first UMAP map of ``x``."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.npy"
        np.save(path, x)
        code = (
            "import time; t0 = time.perf_counter(); import numpy as np; "
            "from napari_cryossl.analysis.population import map_2d; "
            f"map_2d(np.load({str(path)!r}), method='umap', seed=0); "
            "print(time.perf_counter() - t0)"
        )
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the fresh-process UMAP map failed:\n{run.stderr}")
        return round(float(run.stdout.split()[-1]), 2)


def core(n: int, features: int, seed: int = 0) -> dict:
    from napari_cryossl.analysis.population import InstantClassifier, cluster, map_2d

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(10, features))
    truth = rng.integers(0, 10, size=n)
    x = (centres[truth] + rng.normal(0, 1, size=(n, features))).astype(np.float32)
    out = {"particles": n, "features": features}
    try:
        import umap  # noqa: F401
    except ImportError:
        pass
    else:  # numba compiles umap's functions on the first call of a process: what a user
        # waits for the first time is a fresh process's map, imports included
        out["map_umap_fresh_process_s"] = _fresh_process_umap(x)
    for method in ("pca", "umap"):
        t0 = time.perf_counter()
        try:
            _coords, used = map_2d(x, method=method, seed=0)
        except Exception as exc:  # umap-learn not installed
            out[f"map_{method}_s"] = f"not run: {exc}"
            continue
        out[f"map_{used}_s"] = round(time.perf_counter() - t0, 2)
    for name, k in (("hdbscan", None), ("kmeans", 10)):
        t0 = time.perf_counter()
        cluster(x, n_clusters=k, seed=0)
        out[f"cluster_{name}_s"] = round(time.perf_counter() - t0, 2)
    labels = np.zeros(n, np.int64)
    for c in range(10):  # 5 labels per class, as after a few clicks
        labels[np.flatnonzero(truth == c)[:5]] = c + 1
    t0 = time.perf_counter()
    predicted, _prob = InstantClassifier().fit(x, labels).predict(x)
    out["instant_classifier_s"] = round(time.perf_counter() - t0, 3)
    out["instant_classifier_accuracy"] = round(float((predicted == truth + 1).mean()), 3)
    return out


def gui(n: int, box: int) -> dict:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cryossl.io import write_mrc, write_particles

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gui import _measure, settle

    work = Path(tempfile.mkdtemp(prefix="cryossl-bench-map-"))
    rng = np.random.default_rng(0)
    shape = (64, 1024, 1024)
    tomo = work / "noise.mrc"
    write_mrc(tomo, rng.normal(size=shape).astype(np.float32), 10.0)
    zyx = np.column_stack([rng.uniform(box, s - box, n) for s in shape])
    import pandas as pd

    table = pd.DataFrame({"x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0], "class_number": 0})
    star = work / "picks.star"
    write_particles(table, star, voxel_size=10.0)

    viewer = napari.Viewer(show=True)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    app = QApplication.instance()
    assert dock.data.open_path(tomo)
    dock.picking.import_file(star)
    settle(app)  # the viewer is on screen, picks drawn, before the user asks for a map
    session = dock.session
    session.box_size = box
    session.store.add_class("A")
    session.store.add_class("B")
    section = dock.show_section("population")
    section.device.setCurrentText("cpu")
    section.n_clusters.setValue(10)
    section.map_method.setCurrentText("pca")
    rows = {"map_pca": _measure(app, section.start, "compute map (PCA)")}
    try:
        import umap  # noqa: F401

        section.map_method.setCurrentText("umap")
        rows["map_umap"] = _measure(app, section.start, "compute map (UMAP)")
    except ImportError:
        pass

    def on_gui_thread(action) -> float:
        t0 = time.perf_counter()
        action()
        section.canvas.draw()  # what the next paint would cost
        return round(1000 * (time.perf_counter() - t0), 1)

    section.select(np.arange(20))
    session.set_current_class(1)
    rows["label_20_on_map_ms"] = on_gui_thread(lambda: section.label_selection())
    section.select(np.arange(20, 40))
    session.set_current_class(2)
    # the second class: the instant classifier refits and predicts all 10,000
    rows["label_with_instant_predictions_ms"] = on_gui_thread(lambda: section.label_selection())
    rows["instant_classifier_ms"] = round(1000 * section.instant_seconds, 1)
    section.color_by.setCurrentText("clusters")
    rows["recolour_ms"] = on_gui_thread(section.recolor)
    loop = QEventLoop()
    QTimer.singleShot(200, loop.quit)
    loop.exec()
    viewer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--particles", type=int, default=10_000)
    parser.add_argument("--box", type=int, default=16)
    parser.add_argument("--no-gui", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/map.json"))
    args = parser.parse_args(argv)
    import torch

    from napari_cryossl.nn.models import build_encoder

    features = build_encoder("rb3d-small", box_size=args.box).feature_dim
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    if not args.no_gui:  # first, so the GUI's first UMAP map compiles numba as a user's does
        result["gui"] = gui(args.particles, args.box)
        print(json.dumps(result["gui"], indent=2), flush=True)
    result["core"] = core(args.particles, features)
    print(json.dumps(result["core"], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
