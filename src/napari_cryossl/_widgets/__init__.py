"""The napari dock: Qt widgets, each section a thin layer over the GUI-free core.

The dock itself is `main.CryoSSLWidget` (registered in napari.yaml); the modules are
described in docs/architecture.md.
"""
