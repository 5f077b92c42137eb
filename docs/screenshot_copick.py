"""The Data section with a copick project open: save docs/img/gui_copick.png.

Builds a small copick project in a scratch folder with copick's own API (two runs, a
simulated tomogram each, picks of two objects), adds it with *Add copick project…* and
saves the window. Needs the [copick] extra and a display (or Xvfb):

    xvfb-run -a python docs/screenshot_copick.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    import copick
    import napari
    from imageio.v3 import imwrite
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    work = Path(tempfile.mkdtemp(prefix="cryossl-copick-shot-"))
    os.environ["NAPARI_CRYOSSL_SAMPLE_DIR"] = str(work / "sample")
    config = work / "config.json"
    objects = {1: "ribosome", 2: "proteasome"}
    config.write_text(json.dumps({
        "config_type": "filesystem", "name": "demo",
        "overlay_root": f"local://{work / 'overlay'}",
        "static_root": f"local://{work / 'static'}",
        "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [{"name": n, "is_particle": True, "label": k, "radius": 80.0}
                             for k, n in objects.items()],
    }))
    root = copick.from_file(str(config))
    sim = SimulationConfig(n_classes=2, box_size=32, voxel_size=10.0, snr=0.5,
                           particle_diameter_a=150.0)
    for seed, name in enumerate(("TS_001", "TS_002", "TS_003")):
        vol, table = simulate_tomogram((48, 160, 160), 30, sim, seed=seed)
        run = root.new_run(name)
        run.new_voxel_spacing(10.0).new_tomogram("wbp").from_numpy(
            np.asarray(vol, dtype=np.float32))
        xyz = table[["x", "y", "z"]].to_numpy(dtype=np.float64) * 10.0
        for label, obj in objects.items():
            picks = run.new_picks(object_name=obj, session_id="1", user_id="curator")
            picks.from_numpy(xyz[table["class_number"].to_numpy() == label])

    viewer = napari.Viewer(title="napari-cryossl", show=True)
    viewer.window._qt_window.resize(1500, 950)
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
    data = dock.show_section("data")
    data.add_copick_project(config)
    viewer.dims.set_point(0, 24 * 10.0)
    viewer.reset_view()
    loop = QEventLoop()
    QTimer.singleShot(800, loop.quit)
    loop.exec()
    out = HERE / "img" / "gui_copick.png"
    imwrite(out, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
