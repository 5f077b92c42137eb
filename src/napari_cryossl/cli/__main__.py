"""`python -m napari_cryossl.cli` runs the CLI, as `python -m napari_cryossl` does."""

from napari_cryossl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
