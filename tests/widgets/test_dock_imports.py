"""Opening the dock stays quick: building it imports no torch (a fresh process)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import napari
viewer = napari.Viewer(show=False)
_, widget = viewer.window.add_plugin_dock_widget("napari-cryossl", "Classify particles")
heavy = [m for m in ("torch", "lightly", "monai", "kornia") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
viewer.close()
"""


def test_building_the_dock_does_not_import_torch():
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY:")][-1]
    assert line == "HEAVY:", f"building the dock imported {line[6:]}"
