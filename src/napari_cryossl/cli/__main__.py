"""`python -m napari_cryossl.cli` runs the CLI, as it did when the CLI was one module."""

from napari_cryossl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
