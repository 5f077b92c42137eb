"""OME-Zarr tomograms: opened lazily like an MRC file, the same picks and boxes from both."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_cryossl.io import (
    DEFAULT_VOXEL_SIZE,
    TOMOGRAM_SUFFIXES,
    InputError,
    InputWarning,
    open_tomogram,
    read_ome_zarr,
    read_particles,
    write_mrc,
    write_particles,
)

zarr = pytest.importorskip("zarr")

from napari_cryossl.io.omezarr import ChunkedVolume  # noqa: E402

VOXEL = 10.0


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A small crowded tomogram (float32 ZYX) with dark particles of ~150 Å."""
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=VOXEL, snr=1.0, particle_diameter_a=150.0
    )
    vol, _ = simulate_tomogram((40, 72, 88), 14, config, seed=5)
    return np.ascontiguousarray(vol, dtype=np.float32)


@pytest.fixture
def pair(tmp_path, volume, ome_zarr_writer) -> tuple[Path, Path]:
    """The same voxels as an MRC file and as an OME-Zarr folder (chunks of 12, which line
    up with neither the picking chunks nor the boxes)."""
    mrc = tmp_path / "tomo.mrc"
    write_mrc(mrc, volume, VOXEL)
    zarr_path = ome_zarr_writer(tmp_path / "tomo.zarr", volume, VOXEL, chunks=12, n_levels=3)
    return mrc, zarr_path


# ------------------------------------------------------------------------------- opening


def test_open_tomogram_reads_an_ome_zarr_like_an_mrc(pair, volume):
    mrc_path, zarr_path = pair
    mrc, tomo = open_tomogram(mrc_path), open_tomogram(zarr_path)
    assert tomo.shape == mrc.shape == volume.shape
    assert tomo.voxel_size == mrc.voxel_size == VOXEL
    assert tomo.name == "tomo.zarr" and tomo.path == zarr_path
    assert isinstance(tomo.data, ChunkedVolume)  # lazy: nothing read yet
    assert tomo.data.shape == volume.shape and tomo.data.chunks == (12, 12, 12)
    assert [level.shape for level in tomo.levels] == [(40, 72, 88), (20, 36, 44), (10, 18, 22)]
    assert all(isinstance(level, zarr.Array) for level in tomo.levels)
    assert tomo.data.array is tomo.levels[0]
    assert mrc.levels == ()
    np.testing.assert_array_equal(tomo.data[3:9, 10:20, 30:41], volume[3:9, 10:20, 30:41])
    assert ".zarr" in TOMOGRAM_SUFFIXES


@pytest.mark.parametrize(
    ("unit", "scale", "expected"),
    [
        ("angstrom", 7.5, 7.5),
        ("nanometer", 1.2, 12.0),
        ("micrometer", 0.0011, 11.0),
        ("Å", 4.0, 4.0),
    ],
)
def test_voxel_size_is_level_zero_scale_in_angstrom(
    tmp_path, ome_zarr_writer, unit, scale, expected
):
    path = ome_zarr_writer(tmp_path / "t.zarr", np.zeros((8, 16, 16), np.float32), scale, unit=unit)
    assert open_tomogram(path).voxel_size == pytest.approx(expected)


def test_the_multiscale_scale_multiplies_the_level_scale(tmp_path, ome_zarr_writer):
    path = ome_zarr_writer(
        tmp_path / "t.zarr", np.zeros((8, 16, 16), np.float32), 2.0, unit="nanometer"
    )
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["coordinateTransformations"] = [{"type": "scale", "scale": [1.5, 1.5, 1.5]}]
    group.attrs["multiscales"] = ms
    assert open_tomogram(path).voxel_size == pytest.approx(30.0)


def test_ngff_05_on_zarr_v3(tmp_path, ome_zarr_writer, volume):
    path = ome_zarr_writer(tmp_path / "t.zarr", volume, 3.0, unit="nanometer", version="0.5")
    image = read_ome_zarr(path)
    assert image.version == "0.5" and image.voxel_size == pytest.approx(30.0)
    tomo = open_tomogram(path)
    np.testing.assert_array_equal(tomo.data[:], volume)


def test_a_bioformats2raw_folder_opens_its_image(tmp_path, ome_zarr_writer, volume):
    root = tmp_path / "converted.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.attrs["bioformats2raw.layout"] = 3
    ome_zarr_writer(root / "0", volume, VOXEL)
    tomo = open_tomogram(root)
    assert tomo.shape == volume.shape and tomo.voxel_size == VOXEL


def test_missing_unit_or_scale_and_anisotropy_warn(tmp_path, ome_zarr_writer):
    vol = np.zeros((8, 16, 16), np.float32)
    path = ome_zarr_writer(tmp_path / "nounit.zarr", vol, 6.0, unit=None)
    with pytest.warns(InputWarning, match="no unit"):
        assert open_tomogram(path).voxel_size == 6.0

    path = ome_zarr_writer(tmp_path / "noscale.zarr", vol, 6.0)
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    for d in ms[0]["datasets"]:
        d.pop("coordinateTransformations")
    group.attrs["multiscales"] = ms
    with pytest.warns(InputWarning, match="no scale"):
        assert open_tomogram(path).voxel_size == DEFAULT_VOXEL_SIZE

    path = ome_zarr_writer(tmp_path / "aniso.zarr", vol, 6.0)
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [12.0, 6.0, 6.0]
    group.attrs["multiscales"] = ms
    with pytest.warns(InputWarning, match="anisotropic"):
        assert open_tomogram(path).voxel_size == 6.0


def _edit_metadata(path: Path, edit) -> Path:
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    edit(attrs)
    group.attrs.clear()
    group.attrs.update(attrs)
    return path


def _axes(names):
    def edit(attrs):
        attrs["multiscales"][0]["axes"] = [
            {"name": n, "type": "space", "unit": "angstrom"} for n in names
        ]

    return edit


def _bad_cases():
    """(name, how to make it from a good OME-Zarr folder, what the message must say)."""

    def scale(values):
        def edit(attrs):
            attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
                {"type": "scale", "scale": values}
            ]

        return edit

    def unit(value):
        def edit(attrs):
            for axis in attrs["multiscales"][0]["axes"]:
                axis["unit"] = value

        return edit

    def drop_multiscales(attrs):
        attrs.pop("multiscales")

    def plate(attrs):
        attrs.pop("multiscales")
        attrs["plate"] = {"wells": []}

    def missing_level(attrs):
        attrs["multiscales"][0]["datasets"].append(
            {"path": "9", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}
        )

    def no_axes(attrs):
        attrs["multiscales"][0].pop("axes")

    return [
        ("no multiscales", drop_multiscales, "without OME-Zarr 'multiscales'"),
        ("plate", plate, "OME-Zarr plate"),
        ("2D", _axes("yx"), "2D image"),
        ("xyz order", _axes("xyz"), "order x, y, z"),
        ("time axis", _axes("tzyx"), "only 3D images"),
        ("unit", unit("second"), "'second'"),
        ("unknown unit", unit("furlong"), "not a length unit"),
        ("negative scale", scale([-1.0, 1.0, 1.0]), "three positive numbers"),
        ("short scale", scale([1.0, 1.0]), "three positive numbers"),
        ("missing level", missing_level, "listed but missing"),
        ("no axes", no_axes, "no 'axes'"),
    ]


@pytest.mark.parametrize(
    ("edit", "message"), [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()]
)
def test_bad_metadata_is_an_input_error_naming_the_folder(tmp_path, ome_zarr_writer, edit, message):
    path = ome_zarr_writer(tmp_path / "bad.zarr", np.zeros((8, 16, 16), np.float32), VOXEL)
    _edit_metadata(path, edit)
    with pytest.raises(InputError, match="bad.zarr") as err:
        open_tomogram(path)
    assert message in str(err.value)


def test_bad_folders_are_input_errors(tmp_path, ome_zarr_writer):
    cases = []
    cases.append((tmp_path / "missing.zarr", "no such file"))
    (tmp_path / "file.zarr").write_bytes(b"not a folder")
    cases.append((tmp_path / "file.zarr", "is a file"))
    (tmp_path / "plain").mkdir()
    cases.append((tmp_path / "plain", "not a Zarr store"))
    array = zarr.open_array(str(tmp_path / "array.zarr"), mode="w", shape=(4, 8, 8), dtype="f4")
    array[...] = 1
    cases.append((tmp_path / "array.zarr", "is a Zarr array"))
    one = ome_zarr_writer(tmp_path / "one.zarr", np.zeros((1, 16, 16), np.float32), n_levels=1)
    cases.append((one, "2D image"))
    flag = ome_zarr_writer(tmp_path / "bool.zarr", np.zeros((4, 8, 8), bool), n_levels=1)
    cases.append((flag, "type bool"))
    nan = np.zeros((8, 16, 16), np.float32)
    nan[4, 5, 5] = np.nan
    cases.append((ome_zarr_writer(tmp_path / "nan.zarr", nan, n_levels=1), "non-finite"))
    for path, message in cases:
        with pytest.raises(InputError) as err:
            open_tomogram(path)
        assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_a_level_listed_coarser_must_be_smaller(tmp_path, ome_zarr_writer):
    path = ome_zarr_writer(tmp_path / "t.zarr", np.zeros((8, 16, 16), np.float32))
    _edit_metadata(path, lambda a: a["multiscales"][0]["datasets"].reverse())
    with pytest.raises(InputError, match="finest first"):
        open_tomogram(path)


def test_is_ome_zarr_volume_reads_only_metadata(tmp_path, ome_zarr_writer):
    from napari_cryossl.io.omezarr import is_ome_zarr_volume

    good = ome_zarr_writer(tmp_path / "good.zarr", np.zeros((8, 16, 16), np.float32))
    flat = _edit_metadata(
        ome_zarr_writer(tmp_path / "flat.zarr", np.zeros((8, 16, 16), np.float32)), _axes("yx")
    )
    (tmp_path / "plain").mkdir()
    assert is_ome_zarr_volume(good)
    assert not is_ome_zarr_volume(flat)
    assert not is_ome_zarr_volume(tmp_path / "plain")
    assert not is_ome_zarr_volume(tmp_path / "missing.zarr")


def _chunk_files(level: Path) -> list[Path]:
    return [p for p in level.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr"))]


def test_boxes_read_only_the_chunks_they_overlap(tmp_path, ome_zarr_writer, volume):
    """Every level-0 chunk but the one a box needs is corrupted: opening the tomogram and
    extracting that box still work, so nothing else was read."""
    from napari_cryossl.particles.extract import extract_subtomograms

    path = ome_zarr_writer(tmp_path / "t.zarr", volume, VOXEL, chunks=16, n_levels=2)
    keep = path / "0" / "1.2.3"  # chunk (1, 2, 3): voxels z 16-31, y 32-47, x 48-63
    assert keep.is_file()
    for chunk in _chunk_files(path / "0"):
        if chunk != keep:
            chunk.write_bytes(b"corrupt")
    tomo = open_tomogram(path)
    boxes, inside = extract_subtomograms(tomo, [[24, 40, 56]], 8, normalise=False)
    assert inside.all()
    np.testing.assert_array_equal(boxes[0], volume[20:28, 36:44, 52:60])
    # a box or a picking chunk on a corrupt chunk: an InputError naming the tomogram
    with pytest.raises(InputError, match="t.zarr: cannot read the box of particle 0: .*corrupt"):
        extract_subtomograms(tomo, [[4, 4, 4]], 8)
    from napari_cryossl.particles.picking import pick_particles

    with pytest.raises(InputError, match="t.zarr: cannot read .*corrupt"):
        pick_particles(tomo, 8.0)


def test_chunked_volume_slices_like_numpy(tmp_path, volume):
    array = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=volume.shape, chunks=(7, 16, 10), dtype="f4"
    )
    array[...] = volume
    for cache_bytes in (0, 50_000, 10**9):  # no cache, a few chunks, everything
        data = ChunkedVolume(array, cache_bytes=cache_bytes)
        for key in [
            (slice(3, 19), slice(5, 40), slice(0, 88)),
            (5, slice(None), slice(2, 9)),
            (slice(None, None, 9), slice(None, None, 9), slice(None, None, 9)),
            (slice(2, 33, 4), slice(-20, None), 7),
            (Ellipsis, slice(10, 11)),
            (-1,),
            (slice(30, 20), slice(None), slice(None)),  # empty
            (slice(-50, 500), 0, slice(85, 1000)),
        ]:
            np.testing.assert_array_equal(data[key], volume[key], err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(data), volume)
        assert data._cached_bytes <= cache_bytes
    with pytest.raises(IndexError):
        data[40]
    with pytest.raises(IndexError):
        data[::-1]
    clone = pickle.loads(pickle.dumps(data))
    assert clone._cached_bytes == 0 and clone.cache_bytes == data.cache_bytes


def test_a_chunk_is_decoded_only_after_the_cache_made_room_for_it(tmp_path, volume):
    """RAM budget: the cache plus the chunk being decoded stay within ``cache_bytes``, so a
    tomogram in large chunks (the Data Portal's 256³) is never held twice over."""
    array = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=volume.shape, chunks=(8, 16, 16), dtype="f4"
    )
    array[...] = volume
    chunk_bytes = 8 * 16 * 16 * 4
    data = ChunkedVolume(array, cache_bytes=3 * chunk_bytes)
    held_while_decoding = []

    class Watched:  # the zarr array, reporting what the cache holds at each decode
        shape, dtype, chunks = array.shape, array.dtype, array.chunks

        def __getitem__(self, key):
            held_while_decoding.append(data._cached_bytes)
            return array[key]

    data.array = Watched()
    rng = np.random.default_rng(0)
    for _ in range(30):  # boxes all over the volume: chunks come and go
        z, y, x = (int(rng.integers(0, s - 6)) for s in volume.shape)
        np.testing.assert_array_equal(
            data[z : z + 6, y : y + 6, x : x + 6], volume[z : z + 6, y : y + 6, x : x + 6]
        )
    assert len(held_while_decoding) > 3  # the cache did fill and turn over
    assert max(held_while_decoding) + chunk_bytes <= data.cache_bytes


def test_decoded_chunks_are_kept_for_the_next_boxes(tmp_path, ome_zarr_writer, volume):
    """Once read, a box's chunks come from the cache: the files are not read again."""
    from napari_cryossl.particles.extract import extract_subtomograms

    path = ome_zarr_writer(tmp_path / "t.zarr", volume, VOXEL, chunks=16, n_levels=1)
    tomo = open_tomogram(path)
    centers = [[24, 40, 56], [22, 38, 50], [26, 44, 60]]  # within chunks (1, 2, 3) and (1, 2, 2)
    first, _ = extract_subtomograms(tomo, centers, 8)
    assert 0 < tomo.data._cached_bytes <= tomo.data.cache_bytes
    for chunk in _chunk_files(path / "0"):
        chunk.write_bytes(b"corrupt")
    again, _ = extract_subtomograms(tomo, centers, 8)
    np.testing.assert_array_equal(again, first)
    tomo.data.clear_cache()
    with pytest.raises(InputError, match="corrupt"):
        extract_subtomograms(tomo, centers, 8)


# ------------------------------------------------------------------ picking and extraction


def test_picking_an_ome_zarr_copy_gives_the_same_picks(pair):
    from napari_cryossl.particles.picking import pick_particles

    mrc, tomo = (open_tomogram(p) for p in pair)
    for chunk_size in (16, 128):
        a = pick_particles(mrc, 15.0, chunk_size=chunk_size)
        b = pick_particles(tomo, 15.0, chunk_size=chunk_size)
        assert len(a) >= 5
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("box", "binning", "edge"), [(16, 1, "pad"), (8, 2, "pad"), (12, 1, "skip")]
)
def test_extraction_from_an_ome_zarr_copy_gives_identical_boxes(pair, box, binning, edge):
    from napari_cryossl.particles.extract import extract_subtomograms, iter_subtomogram_batches

    mrc, tomo = (open_tomogram(p) for p in pair)
    rng = np.random.default_rng(0)
    centers = rng.uniform(-4, 1, size=(60, 3)) + rng.uniform(0, 1, size=(60, 3)) * np.array(
        tomo.shape
    )
    a, inside_a = extract_subtomograms(mrc, centers, box, binning=binning, edge=edge)
    b, inside_b = extract_subtomograms(tomo, centers, box, binning=binning, edge=edge)
    assert not inside_a.all() and inside_a.any()  # both edge cases are exercised
    np.testing.assert_array_equal(inside_a, inside_b)
    np.testing.assert_array_equal(a, b)
    batches = list(iter_subtomogram_batches(tomo, centers, box, 16, binning=binning, edge=edge))
    order = np.concatenate([i for i, _, _ in batches])
    np.testing.assert_array_equal(np.concatenate([x for _, x, _ in batches]), a[order])


def test_a_star_naming_a_zarr_tomogram_makes_a_subtomogram_set(pair, tmp_path):
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.particles.picking import pick_particles

    mrc_path, zarr_path = pair
    project = tmp_path / "project"
    project.mkdir()
    shutil.move(zarr_path, project / "tomo.zarr")  # alone: "tomo" can only be the .zarr
    zarr_path = project / "tomo.zarr"
    picks = pick_particles(open_tomogram(mrc_path), 15.0)
    reference = SubtomogramSet.from_table(picks, open_tomogram(mrc_path), 16)
    for name in ("tomo.zarr", "tomo"):  # the name as it is, and found by its suffix
        table = picks.copy()
        table["tomo_name"] = name
        star = project / f"picks_{name.replace('.', '_')}.star"
        write_particles(table, star, voxel_size=VOXEL)
        data = SubtomogramSet.from_star(star, box_size=16)
        assert data.tomogram_paths == [zarr_path]
        assert data.voxel_size == VOXEL
        np.testing.assert_array_equal(data.load(slice(None)), reference.load(slice(None)))
        # DataLoader workers get the path, not the arrays, and reopen it
        state = pickle.loads(pickle.dumps(data))
        assert state._tomograms == {str(zarr_path): zarr_path}
        np.testing.assert_array_equal(state.load([0, 1]), reference.load([0, 1]))


def test_a_relion5_tomogram_set_may_name_a_zarr_reconstruction(pair, tmp_path):
    """rlnTomoReconstructedTomogram = tomo.zarr (binned by 2 from the tilt series); the
    centred Å particles land on the same voxels as in the MRC copy, without a binning
    column too (then read from the OME-Zarr scale)."""
    import starfile

    from napari_cryossl.io import RelionTomogram, write_tomograms_star
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.particles.picking import pick_particles

    mrc_path, zarr_path = pair
    picks = pick_particles(open_tomogram(mrc_path), 15.0)
    picks["tomo_name"] = "TS_01"
    reference = SubtomogramSet.from_table(picks, open_tomogram(mrc_path), 16)
    record = RelionTomogram.from_tomogram(open_tomogram(zarr_path), name="TS_01", binning=2.0)
    tomograms = tmp_path / "tomograms.star"
    write_tomograms_star([record], tomograms)
    star = tmp_path / "particles.star"
    write_particles(picks, star, relion5=True, tomograms=tomograms)
    unbinned = tmp_path / "tomograms_no_binning.star"
    table = starfile.read(tomograms, always_dict=True)
    starfile.write(
        {k: v.drop(columns=["rlnTomoTomogramBinning"]) for k, v in table.items()}, unbinned
    )
    for tomo_set in (tomograms, unbinned):
        data = SubtomogramSet.from_star(star, box_size=16, tomograms=tomo_set)
        assert data.tomogram_paths == [zarr_path]
        np.testing.assert_allclose(data.centers_zyx(), reference.centers_zyx(), atol=1e-6)
        np.testing.assert_array_equal(data.load(slice(None)), reference.load(slice(None)))


def test_dataloader_workers_read_a_zarr_tomogram(pair):
    """Worker processes (forked after the parent has read from the store) reopen the
    tomogram from its path and load the same boxes."""
    import torch

    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.particles.loader import batch_loader
    from napari_cryossl.particles.picking import pick_particles

    tomo = open_tomogram(pair[1])
    data = SubtomogramSet.from_table(pick_particles(tomo, 15.0), tomo, 16)
    expected = data.load(slice(None))  # the parent's zarr I/O thread is running now
    batches = np.array_split(np.arange(len(data)), 3)
    loaded = {}
    for boxes, _, rows in batch_loader(data, batches, num_workers=2):
        for row, box in zip(rows.tolist(), boxes, strict=True):
            loaded[row] = box[0]
    assert sorted(loaded) == list(range(len(data)))
    np.testing.assert_array_equal(torch.stack([loaded[i] for i in range(len(data))]), expected)


# ------------------------------------------------------------------------------ the CLI


def test_cli_pick_gives_the_same_picks_from_mrc_and_zarr(pair, tmp_path):
    from napari_cryossl.cli import main

    tables = []
    for path in pair:
        out = tmp_path / f"{path.suffix[1:]}.star"
        assert main(["pick", str(path), "--diameter", "150", "--out", str(out)]) == 0
        tables.append(read_particles(out))
    mrc_table, zarr_table = tables
    assert len(mrc_table) >= 5
    assert set(zarr_table["tomo_name"]) == {"tomo.zarr"}
    cols = [c for c in mrc_table.columns if c != "tomo_name"]
    pd.testing.assert_frame_equal(mrc_table[cols], zarr_table[cols])


@pytest.mark.slow
def test_cli_pretrain_finetune_predict_on_a_zarr_tomogram(pair, tmp_path, volume):
    """The batch commands take a STAR whose rlnTomoName is an OME-Zarr folder."""
    import starfile

    from napari_cryossl.cli import main

    _, zarr_path = pair
    picks = tmp_path / "picks.star"
    assert main(["pick", str(zarr_path), "--diameter", "150", "--out", str(picks)]) == 0
    table = read_particles(picks)
    table["class_number"] = np.arange(len(table)) % 2 + 1  # two classes to fine-tune on
    labelled = tmp_path / "labelled.star"
    write_particles(table, labelled, voxel_size=VOXEL)
    common = ["--preset", "rb3d-small", "--device", "cpu", "--batch-size", "4", "--box-size", "16"]
    encoder, classifier = tmp_path / "encoder.pt", tmp_path / "classifier.pt"
    predictions = tmp_path / "predictions.star"
    assert (
        main(
            [
                "pretrain",
                str(picks),
                "--method",
                "simclr",
                "--out",
                str(encoder),
                "--epochs",
                "1",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "finetune",
                str(labelled),
                "--init",
                str(encoder),
                "--out",
                str(classifier),
                "--epochs",
                "1",
                "--min-steps",
                "0",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                str(classifier),
                str(picks),
                "--out",
                str(predictions),
                "--device",
                "cpu",
                "--box-size",
                "16",
            ]
        )
        == 0
    )
    result = starfile.read(predictions)
    result = result["particles"] if isinstance(result, dict) else result
    assert len(result) == len(table) and set(result["rlnClassNumber"]) <= {1, 2}
    assert set(result["rlnTomoName"]) == {"tomo.zarr"}


def test_cli_reports_a_bad_zarr_in_one_line(tmp_path, capsys, ome_zarr_writer):
    from napari_cryossl.cli import main

    path = ome_zarr_writer(tmp_path / "flat.zarr", np.zeros((8, 16, 16), np.float32))
    _edit_metadata(path, _axes("yx"))
    assert main(["pick", str(path), "--diameter", "150", "--out", str(tmp_path / "p.star")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flat.zarr" in err[0] and "2D image" in err[0]


# -------------------------------------------------------------------- the reference writer


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_what_ome_zarr_writes_reads_the_same(tmp_path, volume, version):
    """ome-zarr (the reference implementation) writes; we read the same voxels, levels and
    voxel size as its own reader."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    path = tmp_path / "ref.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(
            volume,
            group,
            scale_factors=[{"z": 2, "y": 2, "x": 2}],
            fmt=fmt,
            axes=["z", "y", "x"],
            scale={"z": 1.2, "y": 1.2, "x": 1.2},
            axes_units={a: "nanometer" for a in "zyx"},
            storage_options={"chunks": (16, 32, 32)},
        )
    tomo = open_tomogram(path)
    assert tomo.voxel_size == pytest.approx(12.0)
    np.testing.assert_array_equal(tomo.data[:], volume)
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [tuple(d.shape) for d in node.data] == [level.shape for level in tomo.levels]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0] == pytest.approx([1.2, 1.2, 1.2])
    meta = json.dumps(node.metadata["axes"])
    assert "nanometer" in meta


def test_a_learned_picker_picks_an_ome_zarr_as_it_picks_the_mrc(pair, tmp_path):
    """The learned picker reads an OME-Zarr chunk by chunk and finds the same picks, with
    the same scores, as in the MRC of the same voxels."""
    from napari_cryossl.ops import run
    from napari_cryossl.particles.learned_picker import (
        PickerConfig,
        iter_pick_with_model,
        iter_train_picker,
    )
    from napari_cryossl.particles.picking import pick_particles

    mrc_path, zarr_path = pair
    mrc, tomo = open_tomogram(mrc_path), open_tomogram(zarr_path)
    clicks = pick_particles(mrc.data, 15.0).head(6).assign(class_number=1)
    picker = run(iter_train_picker([(mrc, clicks)], diameter_px=15.0,
                                   config=PickerConfig(steps=3), out=tmp_path / "p.pt"))
    a = run(iter_pick_with_model(mrc.data, picker, threshold=0.0, chunk_size=32))
    b = run(iter_pick_with_model(tomo.data, picker, threshold=0.0, chunk_size=32))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
