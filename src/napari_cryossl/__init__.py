"""napari-cryossl: contrastive self-supervised classification of cryo-ET subtomograms.

The package root imports neither torch nor Qt so that `import napari_cryossl`
and napari's plugin discovery stay fast; heavy libraries are imported inside
the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
