"""The npe2 manifest, reader, writer and sample data, through napari itself."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import yaml

import napari_cryossl

MANIFEST = Path(napari_cryossl.__file__).parent / "napari.yaml"


def _python_names() -> list[str]:
    manifest = yaml.safe_load(MANIFEST.read_text())
    return [c["python_name"] for c in manifest["contributions"]["commands"]]


@pytest.mark.parametrize("python_name", _python_names())
def test_every_manifest_python_name_imports(python_name):
    module, attr = python_name.split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_manifest_validates_and_is_the_top_level_file():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cryossl")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == {"Classify particles"}
    top = Path(__file__).parents[2] / "napari.yaml"
    assert top.is_symlink() and top.resolve() == MANIFEST.resolve()


def test_reader_opens_a_tomogram_with_scale_and_visible_contrast(
    make_napari_viewer, tomogram, truth
):
    from napari_cryossl.io import open_tomogram

    viewer = make_napari_viewer()
    layers = viewer.open(str(tomogram), plugin="napari-cryossl")
    assert len(layers) == 1
    image = layers[0]
    assert image.data.shape == (32, 96, 96)
    np.testing.assert_allclose(image.scale, [10.0, 10.0, 10.0])
    assert isinstance(open_tomogram(tomogram).data, np.memmap)  # the reader keeps it mapped
    assert image.metadata["path"] == str(tomogram.resolve())
    # Robust limits lie strictly inside the data range (min/max would wash particles out),
    # and the dark particle centres are darker than the upper limit.
    data = np.asarray(image.data)
    lo, hi = image.contrast_limits
    assert data.min() < lo < hi < data.max()
    zyx = np.round(truth[["z", "y", "x"]].to_numpy()).astype(int)
    assert np.median(data[tuple(zyx.T)]) < (lo + hi) / 2


def test_reader_declines_what_it_cannot_read(tmp_path):
    from napari_cryossl._reader import get_reader

    assert get_reader(str(tmp_path / "image.tif")) is None
    napari_csv = tmp_path / "points.csv"
    napari_csv.write_text("index,axis-0,axis-1\n0,1.0,2.0\n")
    assert get_reader(str(napari_csv)) is None  # napari's own CSV: left to napari
    ours = tmp_path / "particles.csv"
    ours.write_text("x,y,z,class_number\n1,2,3,1\n")
    assert get_reader(str(ours)) is not None


def test_bad_tomogram_is_a_notification_not_a_crash(make_napari_viewer, tmp_path):
    from napari_cryossl.io import InputError

    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file at all" * 10)
    viewer = make_napari_viewer()
    with pytest.raises(InputError, match="broken.mrc"):
        viewer.open(str(bad), plugin="napari-cryossl")
    assert len(viewer.layers) == 0


def test_points_round_trip_through_star_and_csv(make_napari_viewer, tmp_path, tomogram):
    """Writer -> reader keeps ZYX voxel coordinates, class labels and the probability."""
    viewer = make_napari_viewer()
    zyx = np.array([[5.0, 10.5, 20.0], [12.0, 40.0, 60.25], [20.0, 70.0, 8.0]])
    classes = np.array([2, 0, 1])
    points = viewer.add_points(
        zyx,
        scale=(10.0, 10.0, 10.0),
        features={"class_number": classes, "probability": [0.9, np.nan, 0.55]},
        metadata={"tomo_name": tomogram.name},
    )
    for suffix in (".star", ".csv"):
        # beside the tomogram its rlnTomoName / tomo_name names: the reader takes the
        # voxel size (the layer's scale) from that tomogram's header
        out = tomogram.parent / f"particles{suffix}"
        viewer.layers.selection = {points}
        written = viewer.layers.save(str(out), selected=True, plugin="napari-cryossl")
        assert written == [str(out)]
        (layer,) = viewer.open(str(out), plugin="napari-cryossl")
        np.testing.assert_allclose(layer.data, zyx, atol=1e-3)
        np.testing.assert_array_equal(layer.features["class_number"], classes)
        np.testing.assert_allclose(layer.features["probability"], [0.9, np.nan, 0.55], atol=1e-6)
        np.testing.assert_allclose(layer.scale, [10.0, 10.0, 10.0])
        # labelled particles are filled with their class colour, unlabelled ones hollow
        assert layer.face_color[0, 3] > 0 and layer.face_color[1, 3] == 0
        assert not np.allclose(layer.face_color[0], layer.face_color[2])


def test_sample_data_is_a_crowded_tomogram_with_ground_truth(make_napari_viewer, tmp_path):
    from napari_cryossl._sample_data import ensure_sample_files

    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-cryossl", "crowded_tomogram")
    image, truth = layers
    assert image.data.shape == (48, 160, 160)
    np.testing.assert_allclose(image.scale, truth.scale)
    assert len(truth.data) >= 30
    assert set(np.unique(truth.features["class_number"])) == {1, 2, 3, 4}
    # the files are reused: a second call does not simulate again
    paths = ensure_sample_files()
    mtime = paths["tomogram"].stat().st_mtime_ns
    assert ensure_sample_files()["tomogram"].stat().st_mtime_ns == mtime
    assert paths["tomogram"].parent == tmp_path / "sample"
