"""OME-Zarr tomograms in a real viewer: a lazy multiscale Image layer, opened by the plugin's
reader and by the dock's Data section, and DoG picking from the dock on it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_cryossl.io import read_mrc, write_particles

pytest.importorskip("zarr")


@pytest.fixture
def zarr_tomogram(tomogram, ome_zarr_writer):
    """The simulated tomogram as an OME-Zarr folder beside the MRC (3 levels, chunks of 16)."""
    volume, voxel_size = read_mrc(tomogram)
    return ome_zarr_writer(tomogram.with_suffix(".zarr"), volume, voxel_size, chunks=16, n_levels=3)


def test_reader_opens_an_ome_zarr_as_a_lazy_multiscale_image(make_napari_viewer, zarr_tomogram):
    import dask.array as da

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(zarr_tomogram), plugin="napari-cryossl")
    assert image.multiscale
    assert [tuple(level.shape) for level in image.data] == [(32, 96, 96), (16, 48, 48), (8, 24, 24)]
    assert all(isinstance(level, da.Array) for level in image.data)  # read chunk by chunk
    np.testing.assert_allclose(image.scale, [10.0, 10.0, 10.0])  # Å, like the MRC reader
    assert image.metadata["path"] == str(zarr_tomogram.resolve())
    assert image.metadata["napari_cryossl"] == "tomogram"
    lo, hi = image.contrast_limits
    assert lo < hi


def test_reader_leaves_other_zarr_folders_to_other_readers(tmp_path, ome_zarr_writer):
    import zarr

    from napari_cryossl._reader import get_reader

    good = ome_zarr_writer(tmp_path / "good.zarr", np.zeros((8, 16, 16), np.float32))
    flat = ome_zarr_writer(tmp_path / "flat.zarr", np.zeros((8, 16, 16), np.float32))
    group = zarr.open_group(str(flat), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["axes"] = ms[0]["axes"][1:]
    group.attrs["multiscales"] = ms
    (tmp_path / "folder").mkdir()
    assert get_reader(str(good)) is not None
    assert get_reader(str(flat)) is None  # a 2D image: for napari-ome-zarr
    assert get_reader(str(tmp_path / "folder")) is None


def test_dock_opens_an_ome_zarr_and_picks_in_it(dock, zarr_tomogram, truth, qtbot, tmp_path):
    viewer, widget = dock()
    assert widget.data.open_path(zarr_tomogram), widget.data.status.text()
    session = widget.session
    image = session.image_layer
    assert image.multiscale and len(image.data) == 3
    assert session.tomogram.path == zarr_tomogram.resolve()
    assert session.voxel_size == 10.0
    assert "32 × 96 × 96" in widget.data.shape_label.text()
    assert session.store.path == zarr_tomogram.parent / "tomo.cryossl.star"
    np.testing.assert_allclose(session.particles_layer.scale, image.scale)
    assert image.name in [
        widget.data.layer_combo.itemText(i) for i in range(widget.data.layer_combo.count())
    ]

    picking = widget.picking
    picking.diameter.setValue(100.0)
    picking.threshold.setValue(3.0)
    worker = picking.preview()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    picked = np.array(picking.preview_layer.data)
    assert len(picked) >= len(truth) // 2
    assert picking.accept() == len(picked) and len(session.store.table) == len(picked)

    # the same picks as from the MRC file, through another dock
    mrc = tmp_path / "mrc" / "tomo.mrc"
    mrc.parent.mkdir()
    shutil.copy(zarr_tomogram.with_suffix(".mrc"), mrc)
    _, other = dock()
    assert other.data.open_path(mrc)
    other.picking.diameter.setValue(100.0)
    other.picking.threshold.setValue(3.0)
    worker = other.picking.preview()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    np.testing.assert_array_equal(other.picking.preview_layer.data, picked)

    # a particle file naming the .zarr gets its voxel size (the layer's scale) from it
    star = zarr_tomogram.parent / "picks.star"
    table = session.store.table
    table["tomo_name"] = zarr_tomogram.name
    write_particles(table, star)
    (points,) = viewer.open(str(star), plugin="napari-cryossl")
    np.testing.assert_allclose(points.scale, [10.0, 10.0, 10.0])
    np.testing.assert_allclose(points.data, picked, atol=1e-3)
