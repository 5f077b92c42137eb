"""SubtomogramSet: one view over subtomogram files, tomogram coordinates and arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryossl.io import (
    InputError,
    make_particle_table,
    open_tomogram,
    write_mrc,
    write_particles,
)
from napari_cryossl.particles.dataset import DEFAULT_BOX_SIZE, SubtomogramSet
from napari_cryossl.particles.extract import extract_subtomograms, normalise_subtomograms

RNG = np.random.default_rng(0)


def reference_normalise(box: np.ndarray) -> np.ndarray:
    box = box.astype(np.float64)
    return (box - box.mean()) / box.std()


@pytest.fixture
def subtomo_star(tmp_path):
    """A RELION-style STAR listing five 6^3 subtomograms (relative names, classes)."""
    folder = tmp_path / "Subtomograms"
    folder.mkdir()
    volumes = RNG.normal(3.0, 2.0, size=(5, 6, 6, 6)).astype(np.float32)
    names = []
    for i, vol in enumerate(volumes):
        write_mrc(folder / f"p{i}.mrc", vol, 8.0)
        names.append(f"Subtomograms/p{i}.mrc")
    star = tmp_path / "particles.star"
    starfile.write(
        {"particles": pd.DataFrame({"rlnImageName": names, "rlnClassNumber": [1, 2, 0, 2, 1]})},
        star,
    )
    return star, volumes


def write_tomogram(path, shape=(20, 30, 40), seed=1, voxel_size=10.0):
    volume = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    write_mrc(path, volume, voxel_size)
    return volume


def relion4_star(path, xyz, tomo_names=None, classes=None):
    columns = {
        "rlnCoordinateX": xyz[:, 0],
        "rlnCoordinateY": xyz[:, 1],
        "rlnCoordinateZ": xyz[:, 2],
    }
    if tomo_names is not None:
        columns["rlnTomoName"] = tomo_names
    if classes is not None:
        columns["rlnClassNumber"] = classes
    starfile.write({"particles": pd.DataFrame(columns)}, path)


# -- arrays -------------------------------------------------------------------------------------


def test_from_arrays_loads_normalised_boxes_in_the_asked_order():
    volumes = RNG.normal(5, 3, size=(4, 5, 5, 5)).astype(np.float32)
    data = SubtomogramSet.from_arrays(volumes, [1, 0, 2, 2], voxel_size=12.0)
    assert len(data) == 4 and data.box_size == 5 and data.voxel_size == 12.0
    assert data.class_numbers.dtype == np.int64
    assert data.class_numbers.tolist() == [1, 0, 2, 2]
    assert data.tomogram is None and np.isnan(data.centers_zyx()).all()
    boxes = data.load([2, 0])
    assert boxes.dtype == np.float32 and boxes.shape == (2, 5, 5, 5)
    np.testing.assert_allclose(boxes[0], reference_normalise(volumes[2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxes[1], reference_normalise(volumes[0]), rtol=1e-5, atol=1e-6)
    assert data.load(slice(None)).shape == (4, 5, 5, 5)
    assert data.load(np.array([True, False, False, True])).shape == (2, 5, 5, 5)
    assert SubtomogramSet.from_arrays(volumes).class_numbers.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("volumes", "kwargs", "match"),
    [
        (np.zeros((2, 4, 4, 5)), {}, "cubic"),
        (np.zeros((4, 4, 4)), {}, "cubic"),
        (np.full((2, 4, 4, 4), np.nan), {}, "subtomogram 0"),
        (np.zeros((2, 4, 4, 4)), {"class_numbers": [1]}, "class numbers"),
        (np.zeros((2, 4, 4, 4)), {"class_numbers": [1, -1]}, ">= 0"),
        (np.zeros((2, 4, 4, 4)), {"class_numbers": [1.5, 1]}, "whole"),
        (np.zeros((2, 4, 4, 4)), {"voxel_size": 0}, "voxel size"),
    ],
)
def test_from_arrays_rejects_bad_input(volumes, kwargs, match):
    with pytest.raises(InputError, match=match):
        SubtomogramSet.from_arrays(volumes, **kwargs)


def test_subset_and_relabel_share_the_data():
    volumes = RNG.normal(size=(6, 4, 4, 4)).astype(np.float32)
    data = SubtomogramSet.from_arrays(volumes, [1, 2, 3, 1, 2, 3])
    sub = data.subset([5, 1])
    assert len(sub) == 2 and sub.class_numbers.tolist() == [3, 2]
    np.testing.assert_array_equal(sub.load([0, 1]), data.load([5, 1]))
    relabelled = sub.with_class_numbers([0, 7])
    assert relabelled.class_numbers.tolist() == [0, 7]
    assert sub.class_numbers.tolist() == [3, 2]  # the original is untouched
    with pytest.raises(IndexError):
        sub.load([2])


def test_simulated_subtomograms():
    from napari_cryossl.simulate import SimulationConfig, simulate_subtomograms

    config = SimulationConfig(n_classes=2, box_size=16)
    volumes, labels = simulate_subtomograms(2, config, seed=0)
    data = SubtomogramSet.from_arrays(volumes, labels, voxel_size=config.voxel_size)
    assert sorted(set(data.class_numbers.tolist())) == [1, 2]
    boxes = data.load(range(len(data)))
    np.testing.assert_allclose(boxes.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(boxes.std(axis=(1, 2, 3)), 1, atol=1e-4)


# -- STAR of subtomogram files ------------------------------------------------------------------


def test_star_of_subtomograms(subtomo_star):
    star, volumes = subtomo_star
    data = SubtomogramSet.from_star(star)
    assert data.kind == "files" and len(data) == 5
    assert data.box_size == 6 and data.voxel_size == pytest.approx(8.0)
    assert data.class_numbers.tolist() == [1, 2, 0, 2, 1]
    assert data.source_path == star
    boxes = data.load([4, 0, 2])
    for box, i in zip(boxes, [4, 0, 2], strict=True):
        np.testing.assert_allclose(box, reference_normalise(volumes[i]), rtol=1e-5, atol=1e-6)
    assert SubtomogramSet.from_star(star, box_size=6).box_size == 6


def test_star_of_subtomograms_with_binning(subtomo_star):
    star, volumes = subtomo_star
    data = SubtomogramSet.from_star(star, binning=2)
    assert data.box_size == 3 and data.voxel_size == pytest.approx(16.0)
    pooled = volumes[1].reshape(3, 2, 3, 2, 3, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(data.load([1])[0], reference_normalise(pooled), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="not divisible by binning 4"):
        SubtomogramSet.from_star(star, binning=4)


def test_star_of_subtomograms_box_size_must_match(subtomo_star):
    star, _ = subtomo_star
    with pytest.raises(InputError, match=r"box_size 8 requested but the subtomograms are 6"):
        SubtomogramSet.from_star(star, box_size=8)


def test_subtomograms_of_different_sizes_are_refused(subtomo_star):
    star, _ = subtomo_star
    write_mrc(star.parent / "Subtomograms" / "p3.mrc", np.zeros((8, 8, 8), np.float32), 8.0)
    with pytest.raises(InputError, match=r"p3\.mrc \(row 4\) is 8x8x8"):
        SubtomogramSet.from_star(star)


def test_missing_subtomogram_is_named(subtomo_star):
    star, _ = subtomo_star
    (star.parent / "Subtomograms" / "p2.mrc").unlink()
    with pytest.raises(InputError, match=r"p2\.mrc"):
        SubtomogramSet.from_star(star)


def test_subtomograms_are_cached_in_ram_up_to_the_budget(subtomo_star):
    star, volumes = subtomo_star
    cached = SubtomogramSet.from_star(star, cache_bytes=10**6)
    uncached = SubtomogramSet.from_star(star, cache_bytes=0)
    first = cached.load(range(5))
    uncached.load(range(5))
    for i in range(5):
        (star.parent / "Subtomograms" / f"p{i}.mrc").unlink()
    np.testing.assert_array_equal(cached.load(range(5)), first)  # served from RAM
    np.testing.assert_array_equal(cached.subset([3]).load([0]), first[3:4])  # shared cache
    with pytest.raises(InputError, match=r"p0\.mrc"):
        uncached.load([0])


# -- STAR of coordinates in tomograms -----------------------------------------------------------


def test_coordinates_find_their_tomogram_next_to_the_star(tmp_path):
    write_tomogram(tmp_path / "tomo_a.mrc")
    xyz = np.array([[10.0, 12.0, 8.0], [30.4, 5.0, 15.0], [2.0, 2.0, 2.0]])
    star = tmp_path / "picks.star"
    relion4_star(star, xyz, ["tomo_a"] * 3, [1, 0, 2])  # name without .mrc, as RELION writes
    data = SubtomogramSet.from_star(star, box_size=8)
    assert data.kind == "tomogram" and data.box_size == 8
    assert data.tomogram.path == tmp_path / "tomo_a.mrc"
    assert data.voxel_size == pytest.approx(10.0)
    assert data.class_numbers.tolist() == [1, 0, 2]
    np.testing.assert_allclose(data.centers_zyx(), xyz[:, ::-1])
    expected, inside = extract_subtomograms(data.tomogram, xyz[:, ::-1], 8)
    np.testing.assert_array_equal(data.load(range(3)), expected)
    assert data.inside().tolist() == inside.tolist() == [True, True, False]
    assert SubtomogramSet.from_star(star).box_size == DEFAULT_BOX_SIZE


def test_coordinates_in_several_tomograms(tmp_path):
    a = write_tomogram(tmp_path / "a.mrc", seed=1)
    b = write_tomogram(tmp_path / "b.mrc", seed=2)
    xyz = np.array([[10.0, 12.0, 8.0], [20.0, 15.0, 10.0], [11.0, 13.0, 9.0]])
    star = tmp_path / "picks.star"
    relion4_star(star, xyz, ["a.mrc", "b.mrc", "a.mrc"])
    data = SubtomogramSet.from_star(star, box_size=6, binning=1)
    assert data.tomogram is None  # more than one
    assert sorted(p.name for p in data.tomogram_paths) == ["a.mrc", "b.mrc"]
    boxes = data.load([1, 0, 2])
    np.testing.assert_array_equal(boxes[0], extract_subtomograms(b, [xyz[1, ::-1]], 6)[0][0])
    np.testing.assert_array_equal(boxes[1], extract_subtomograms(a, [xyz[0, ::-1]], 6)[0][0])
    np.testing.assert_array_equal(boxes[2], extract_subtomograms(a, [xyz[2, ::-1]], 6)[0][0])
    with pytest.raises(InputError, match="lists 2 tomograms"):
        SubtomogramSet.from_star(star, tomogram=tmp_path / "a.mrc")


def test_explicit_tomogram_and_missing_tomogram(tmp_path):
    write_tomogram(tmp_path / "t.mrc")
    xyz = np.array([[10.0, 12.0, 8.0]])
    unnamed = tmp_path / "unnamed.star"
    relion4_star(unnamed, xyz)
    with pytest.raises(InputError, match="no tomogram name.*--tomogram"):
        SubtomogramSet.from_star(unnamed)
    data = SubtomogramSet.from_star(unnamed, tomogram=tmp_path / "t.mrc", box_size=4)
    assert data.tomogram.path == tmp_path / "t.mrc"
    assert (
        SubtomogramSet.from_star(unnamed, tomogram=open_tomogram(tmp_path / "t.mrc")).box_size == 32
    )
    lost = tmp_path / "lost.star"
    relion4_star(lost, xyz, ["TS_07"])
    with pytest.raises(InputError, match=r"tomogram 'TS_07' not found \(tried .*TS_07\.mrc"):
        SubtomogramSet.from_star(lost)


def test_relion5_centred_coordinates(tmp_path):
    shape, voxel = (20, 30, 40), 10.0
    write_tomogram(tmp_path / "TS_01.mrc", shape=shape, voxel_size=voxel)
    table = make_particle_table(
        [[5.0, 10.0, 20.0], [12.5, 3.0, 33.0]], class_number=[2, 1], tomo_name="TS_01"
    )
    star = tmp_path / "relion5.star"
    write_particles(table, star, voxel_size=voxel, tomogram_shape=shape, relion5=True)
    assert "rlnCenteredCoordinateXAngst" in starfile.read(star).columns
    found = SubtomogramSet.from_star(star, box_size=6)
    given = SubtomogramSet.from_star(star, box_size=6, tomogram=tmp_path / "TS_01.mrc")
    expected = [[5.0, 10.0, 20.0], [12.5, 3.0, 33.0]]
    np.testing.assert_allclose(found.centers_zyx(), expected, atol=1e-6)
    np.testing.assert_allclose(given.centers_zyx(), expected, atol=1e-9)
    np.testing.assert_array_equal(found.load([0, 1]), given.load([0, 1]))


def test_coordinates_outside_the_tomogram_are_refused(tmp_path):
    write_tomogram(tmp_path / "t.mrc", shape=(20, 30, 40))
    star = tmp_path / "bin1.star"
    relion4_star(star, np.array([[10.0, 10.0, 10.0], [160.0, 20.0, 10.0]]), ["t"] * 2)
    with pytest.raises(InputError, match="particle 2 .* outside its tomogram"):
        SubtomogramSet.from_star(star)


def test_mixed_and_empty_files_are_refused(tmp_path):
    write_mrc(tmp_path / "s.mrc", np.zeros((4, 4, 4), np.float32), 5.0)
    mixed = tmp_path / "mixed.star"
    starfile.write(
        {
            "particles": pd.DataFrame(
                {
                    "rlnCoordinateX": [1.0, 2.0],
                    "rlnCoordinateY": [1.0, 2.0],
                    "rlnCoordinateZ": [1.0, 2.0],
                    "rlnImageName": ["s.mrc", ""],
                }
            )
        },
        mixed,
    )
    with pytest.raises(InputError, match="1 of 2 rows name a subtomogram"):
        SubtomogramSet.from_star(mixed)
    empty = tmp_path / "empty.csv"
    empty.write_text("x,y,z\n")
    with pytest.raises(InputError, match="no particles"):
        SubtomogramSet.from_star(empty, tomogram=tmp_path / "s.mrc")


def test_from_table_with_picks_in_a_simulated_tomogram(tmp_path):
    from napari_cryossl.particles.picking import pick_particles
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(n_classes=2, box_size=16, snr=0.5)
    volume, _ = simulate_tomogram((32, 64, 64), 8, config, seed=0)
    write_mrc(tmp_path / "sim.mrc", volume, config.voxel_size)
    tomo = open_tomogram(tmp_path / "sim.mrc")
    picks = pick_particles(tomo, config.particle_diameter_px)
    assert len(picks) >= 6
    data = SubtomogramSet.from_table(picks, tomo, 16)
    assert data.voxel_size == config.voxel_size and len(data) == len(picks)
    expected, _ = extract_subtomograms(tomo, picks[["z", "y", "x"]].to_numpy(), 16)
    np.testing.assert_array_equal(data.load(range(len(data))), expected)
    binned = SubtomogramSet.from_table(picks, tmp_path / "sim.mrc", 8, binning=2)
    assert binned.voxel_size == 2 * config.voxel_size and binned.load([0]).shape == (1, 8, 8, 8)


def test_from_tables_spans_several_tomograms_each_box_from_its_own(tmp_path):
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    config = SimulationConfig(n_classes=2, box_size=16, snr=0.5)
    tables, tomos = [], []
    for seed, n in ((0, 5), (1, 4)):
        volume, truth = simulate_tomogram((32, 64, 64), n, config, seed=seed)
        write_mrc(tmp_path / f"sim{seed}.mrc", volume, config.voxel_size)
        tables.append(truth)
        tomos.append(open_tomogram(tmp_path / f"sim{seed}.mrc"))
    data = SubtomogramSet.from_tables(list(zip(tables, tomos, strict=True)), 16)
    assert len(data) == len(tables[0]) + len(tables[1])
    assert data.tomogram is None and data.tomogram_paths == [t.path for t in tomos]
    np.testing.assert_array_equal(
        data.class_numbers, np.concatenate([t["class_number"].to_numpy() for t in tables])
    )
    expected = np.concatenate(
        [
            SubtomogramSet.from_table(t, tomo, 16).load(slice(None))
            for t, tomo in zip(tables, tomos, strict=True)
        ]
    )
    np.testing.assert_array_equal(data.load(range(len(data))), expected)
    # the same order through a subset (what a DataLoader's batches do)
    np.testing.assert_array_equal(data.subset([6, 0]).load(slice(None)), expected[[6, 0]])
    # empty tables are allowed; different voxel sizes are not
    empty = tables[0].iloc[:0]
    assert len(SubtomogramSet.from_tables([(empty, tomos[0]), (tables[1], tomos[1])], 16)) == 4
    write_mrc(tmp_path / "other.mrc", np.zeros((32, 64, 64), np.float32), 2 * config.voxel_size)
    with pytest.raises(InputError, match="voxel sizes"):
        SubtomogramSet.from_tables([(tables[0], tomos[0]), (tables[1], tmp_path / "other.mrc")], 16)
    with pytest.raises(InputError, match="no tomogram"):
        SubtomogramSet.from_tables([], 16)


# -- pickling, DataLoader, imports --------------------------------------------------------------


def test_pickles_paths_not_voxels(tmp_path):
    write_tomogram(tmp_path / "big.mrc", shape=(64, 64, 64))  # 1 MiB of voxels
    table = make_particle_table([[32.0, 32.0, 32.0], [10.0, 50.0, 20.0]], class_number=[1, 2])
    data = SubtomogramSet.from_table(table, tmp_path / "big.mrc", 8)
    data.load([0])  # opens the memmap
    blob = pickle.dumps(data)
    assert len(blob) < 20_000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.load([0, 1]), data.load([0, 1]))
    assert again.class_numbers.tolist() == [1, 2]


def test_in_memory_tomogram_and_arrays_pickle_their_data(tmp_path):
    from napari_cryossl.io import Tomogram

    volume = RNG.normal(size=(16, 16, 16)).astype(np.float32)
    tomo = Tomogram(path=tmp_path / "not_on_disk.mrc", data=volume, voxel_size=4.0)
    data = SubtomogramSet.from_table(make_particle_table([[8.0, 8.0, 8.0]]), tomo, 6)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(data)).load([0]), data.load([0]))
    arrays = SubtomogramSet.from_arrays(RNG.normal(size=(3, 4, 4, 4)), [1, 2, 1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(arrays)).load([2]), arrays.load([2]))


def test_torch_dataloader_with_spawned_workers(subtomo_star):
    torch = pytest.importorskip("torch")
    star, _ = subtomo_star
    data = SubtomogramSet.from_star(star)
    loader = torch.utils.data.DataLoader(
        data, batch_size=2, num_workers=2, multiprocessing_context="spawn", shuffle=False
    )
    boxes, labels = zip(*loader, strict=True)
    boxes = torch.cat(boxes).numpy()
    assert boxes.shape == (5, 1, 6, 6, 6)
    np.testing.assert_array_equal(boxes[:, 0], data.load(range(5)))
    assert torch.cat(labels).tolist() == [1, 2, 0, 2, 1]
    box, label = data[3]
    assert box.shape == (1, 6, 6, 6) and label == 2
    np.testing.assert_allclose(normalise_subtomograms(box), box, atol=1e-6)
