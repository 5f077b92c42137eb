"""`python -m napari_cryossl` (also what torchrun launches) runs the CLI."""

from napari_cryossl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
