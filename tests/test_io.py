"""io/: MRC tomograms, STAR/CSV particle tables, atomic writes, input errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryossl.io import (
    PARTICLE_COLUMNS,
    InputError,
    InputWarning,
    atomic_write,
    centred_to_voxels,
    make_particle_table,
    open_tomogram,
    particle_zyx,
    read_mrc,
    read_particles,
    remove_stale_temp_files,
    replace_star_columns,
    voxels_to_centred,
    write_mrc,
    write_particles,
)


def new_mrc(path: Path, data: np.ndarray, voxel_size=None, **header) -> Path:
    """An MRC file written by mrcfile itself (not by the code under test)."""
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as mrc:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN test data
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size
        for key, value in header.items():
            setattr(mrc.header, key, value)
    return path


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 7, 8)).astype(np.float32)


# ----------------------------------------------------------------------------- tomograms


@pytest.mark.parametrize("suffix", [".mrc", ".rec", ".map"])
def test_open_tomogram_is_a_read_only_zyx_memmap_with_header_voxel_size(tmp_path, volume, suffix):
    path = new_mrc(tmp_path / f"tomo{suffix}", volume, voxel_size=13.5)
    tomo = open_tomogram(path)
    assert isinstance(tomo.data, np.memmap)
    assert not tomo.data.flags.writeable
    assert tomo.shape == (6, 7, 8) and tomo.voxel_size == 13.5
    assert tomo.path == path and tomo.name == f"tomo{suffix}"
    np.testing.assert_array_equal(tomo.data, volume)
    with pytest.raises(ValueError):
        tomo.data[0, 0, 0] = 1.0


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.float32, np.uint16, np.float16], ids=lambda d: np.dtype(d).name
)
def test_supported_modes_keep_their_dtype_and_values(tmp_path, dtype):
    data = (np.arange(4 * 5 * 6) % 100).reshape(4, 5, 6).astype(dtype)
    path = new_mrc(tmp_path / "m.mrc", data, voxel_size=2.0)
    tomo = open_tomogram(path)
    assert tomo.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tomo.data, data)
    full, vs = read_mrc(path)
    assert full.dtype == np.float32 and full.flags.writeable and vs == 2.0
    np.testing.assert_array_equal(full, data.astype(np.float32))


def test_big_endian_file_reads_the_same_values(tmp_path, volume):
    path = new_mrc(tmp_path / "be.mrc", volume.astype(">f4"), voxel_size=3.0)
    np.testing.assert_array_equal(open_tomogram(path).data, volume)


def test_imod_unsigned_bytes_are_read_as_uint8(tmp_path):
    data = np.array([0, 100, 200, 255] * 6, dtype=np.uint8).reshape(2, 3, 4)
    path = new_mrc(tmp_path / "u8.mrc", data.view(np.int8), voxel_size=1.0)
    raw = bytearray(path.read_bytes())
    raw[152:160] = np.array([1146047817, 0], dtype="<i4").tobytes()  # IMOD stamp, unsigned
    path.write_bytes(bytes(raw))
    tomo = open_tomogram(path)
    assert tomo.data.dtype == np.uint8
    np.testing.assert_array_equal(tomo.data, data)


def test_non_standard_axis_order_is_transposed_to_zyx(tmp_path, volume):
    # Store columns = Z, rows = Y, sections = X (MAPC=3, MAPR=2, MAPS=1).
    stored = np.ascontiguousarray(volume.transpose(2, 1, 0))
    path = new_mrc(tmp_path / "axes.mrc", stored, voxel_size=1.0, mapc=3, mapr=2, maps=1)
    tomo = open_tomogram(path)
    assert tomo.shape == volume.shape
    np.testing.assert_array_equal(tomo.data, volume)


def test_missing_voxel_size_warns_and_uses_one(tmp_path, volume):
    path = new_mrc(tmp_path / "novs.mrc", volume)  # mrcfile leaves cella = 0
    with pytest.warns(InputWarning, match=r"novs\.mrc.*no voxel size.*1\.0"):
        tomo = open_tomogram(path)
    assert tomo.voxel_size == 1.0


def test_subvolume_reads_do_not_load_the_tomogram(tmp_path):
    """A 512 MiB tomogram opens and yields a box with a few MiB of allocations."""
    path = tmp_path / "big.mrc"
    nz, ny, nx = 256, 512, 1024
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 2, 2), dtype=np.float32))
        mrc.voxel_size = 10.0
    raw = bytearray(path.read_bytes()[:1024])
    raw[0:12] = np.array([nx, ny, nz], dtype="<i4").tobytes()
    raw[28:40] = np.array([nx, ny, nz], dtype="<i4").tobytes()
    raw[40:52] = np.array([nx * 10.0, ny * 10.0, nz * 10.0], dtype="<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(raw)
        fh.truncate(1024 + nx * ny * nz * 4)  # sparse: costs no disk
    tracemalloc.start()
    try:
        tomo = open_tomogram(path)
        box = np.array(tomo.data[100:132, 200:232, 300:332])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tomo.shape == (nz, ny, nx) and box.shape == (32, 32, 32)
    assert peak < 16 * 1024**2  # one Z slice (checked for NaN) is 2 MiB; the volume 512 MiB


def test_memmap_outlives_the_file_handle(tmp_path, volume):
    path = new_mrc(tmp_path / "t.mrc", volume, voxel_size=1.0)
    fd_dir = Path("/proc/self/fd")
    before = len(list(fd_dir.iterdir())) if fd_dir.exists() else None
    tomo = open_tomogram(path)
    if before is not None:
        assert len(list(fd_dir.iterdir())) <= before + 1  # the mapping's own descriptor at most
    np.testing.assert_array_equal(tomo.data[2], volume[2])


def _header_bytes(volume, tmp_path) -> bytearray:
    path = new_mrc(tmp_path / "src.mrc", volume, voxel_size=1.0)
    return bytearray(path.read_bytes())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda raw: b"", "truncated: 0 bytes"),
        (lambda raw: raw[:500], "an MRC header alone is 1024"),
        (lambda raw: b"hello world " * 200, "not an MRC file"),
        (lambda raw: raw[:-10], r"truncated or corrupt: .*8 x 7 x 6"),
        (lambda raw: raw[:12] + np.int32(4).tobytes() + raw[16:], "unsupported MRC mode 4"),
        (lambda raw: raw[:12] + np.int32(3).tobytes() + raw[16:], "unsupported MRC mode 3"),
        (lambda raw: raw[:92] + np.int32(10**6).tobytes() + raw[96:], "truncated or corrupt"),
        (lambda raw: raw[:92] + np.int32(-5).tobytes() + raw[96:], "extended header size -5"),
        (lambda raw: raw[:0] + np.int32(-8).tobytes() + raw[4:], "dimensions nx=-8"),
        (lambda raw: raw[:64] + np.array([1, 1, 3], "<i4").tobytes() + raw[76:], "axis mapping"),
    ],
)
def test_bad_mrc_files_raise_input_error_naming_file_and_problem(tmp_path, volume, make, match):
    path = tmp_path / "bad.mrc"
    path.write_bytes(bytes(make(_header_bytes(volume, tmp_path))))
    for reader in (open_tomogram, read_mrc):
        with pytest.raises(InputError, match=match) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_2d_images_and_single_section_stacks_are_rejected(tmp_path):
    image = new_mrc(tmp_path / "image.mrc", np.zeros((5, 6), dtype=np.float32))
    with pytest.raises(InputError, match=r"image\.mrc: is a 2D image"):
        open_tomogram(image)
    stack = tmp_path / "stack.mrcs"
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(np.zeros((1, 5, 6), dtype=np.float32))
        mrc.set_image_stack()
    with pytest.raises(InputError, match="2D image"):
        read_mrc(stack)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_tomogram(tmp_path / "nope.mrc")
    with pytest.raises(InputError, match="is a folder"):
        open_tomogram(tmp_path)


def test_non_finite_voxels(tmp_path, volume):
    off_centre = volume.copy()
    off_centre[0, 1, 2] = np.nan
    path = new_mrc(tmp_path / "nan.mrc", off_centre, voxel_size=1.0)
    open_tomogram(path)  # cheap check: only the central slice is inspected
    with pytest.raises(InputError, match=r"nan\.mrc: non-finite voxel .* z=0, y=1, x=2"):
        read_mrc(path)
    central = volume.copy()
    central[3, 4, 5] = np.inf
    path = new_mrc(tmp_path / "inf.mrc", central, voxel_size=1.0)
    with pytest.raises(InputError, match=r"inf\.mrc: non-finite voxel .* z=3, y=4, x=5"):
        open_tomogram(path)


def test_write_mrc_round_trip_and_validation(tmp_path, volume):
    path = tmp_path / "out.mrc"
    write_mrc(path, volume.astype(np.float64), 7.25)
    with mrcfile.open(path) as mrc:  # a standard file for other software
        assert int(mrc.header.mode) == 2 and int(mrc.header.ispg) == 1
        assert float(mrc.voxel_size.x) == 7.25
    data, vs = read_mrc(path)
    np.testing.assert_array_equal(data, volume)
    assert vs == 7.25
    before = path.read_bytes()
    for bad, match in [
        (np.zeros((4, 4)), "3D"),
        (np.full((2, 2, 2), np.nan), "non-finite"),
    ]:
        with pytest.raises(InputError, match=match):
            write_mrc(path, bad, 1.0)
    with pytest.raises(InputError, match="voxel_size must be a positive number"):
        write_mrc(path, volume, 0.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrc"]


# --------------------------------------------------------------------------- atomic write


def test_atomic_write_replaces_on_success_and_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "a.star"
    path.write_text("old")
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".star" and not tmp.exists()
        tmp.write_text("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.star"]


def test_remove_stale_temp_files_only_removes_dead_writers(tmp_path):
    path = tmp_path / "p.star"
    pid = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    dead = tmp_path / f".p.star.{pid}-abcd1234.tmp.star"
    mine = tmp_path / f".p.star.{os.getpid()}-abcd1234.tmp.star"
    dead.write_text("x")
    mine.write_text("x")
    assert remove_stale_temp_files(path) == 1
    assert not dead.exists() and mine.exists()


# ------------------------------------------------------------------------ particle table


def test_make_particle_table_columns_dtypes_and_zyx_order():
    table = make_particle_table([[1, 2, 3]], class_number=2, score=[0.5], tomo_name="t")
    assert list(table.columns) == PARTICLE_COLUMNS
    assert (table["z"][0], table["y"][0], table["x"][0]) == (1.0, 2.0, 3.0)
    assert table["class_number"].dtype == np.int64 and table["x"].dtype == np.float64
    np.testing.assert_array_equal(particle_zyx(table), [[1.0, 2.0, 3.0]])
    files = make_particle_table(image_name=["/a.mrc", "/b.mrc"], class_number=[1, 2])
    assert len(files) == 2 and np.isnan(particle_zyx(files)).all()
    assert len(make_particle_table()) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"zyx": [[1, 2]]}, r"\(N, 3\)"),
        ({"zyx": [[1, 2, 3]], "class_number": -1}, "non-negative integer"),
        ({"zyx": [[1, 2, 3]], "class_number": 1.5}, "non-negative integer"),
        ({"zyx": [[1, 2, 3]], "source": "guess"}, "unknown source"),
        ({"zyx": [[1, 2, 3]], "score": [1, 2]}, "2 values for 1"),
    ],
)
def test_make_particle_table_validates(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_particle_table(**kwargs)


# ----------------------------------------------------------------------------- STAR files

RELION4 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnTomoTiltSeriesPixelSize #3
1 opticsGroup1 1.350000

# version 30001

data_particles

loop_
_rlnTomoName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnAngleRot #5
_rlnClassNumber #6
_rlnOpticsGroup #7
001   512.000000   300.500000   120.000000    12.5   2   1
001   100.000000   200.000000    50.000000   -40.0   1   1
"""

RELION3 = """
data_

loop_
_rlnMicrographName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
Tomograms/TS_01.mrc 10 20 30
Tomograms/TS_01.mrc 11 21 31
"""


def test_relion4_star_with_optics_block(tmp_path):
    path = tmp_path / "r4.star"
    path.write_text(RELION4)
    table = read_particles(path)
    assert list(table.columns) == PARTICLE_COLUMNS
    np.testing.assert_array_equal(
        particle_zyx(table), [[120.0, 300.5, 512.0], [50.0, 200.0, 100.0]]
    )
    assert table["class_number"].tolist() == [2, 1]
    assert table["tomo_name"].tolist() == ["001", "001"]  # not turned into the number 1
    assert (table["source"] == "imported").all()
    assert table.attrs["format"] == "relion3/4" and table.attrs["voxel_size"] == 1.35


def test_relion3_star_uses_micrograph_name_and_defaults_to_unlabelled(tmp_path):
    path = tmp_path / "r3.star"
    path.write_text(RELION3)
    table = read_particles(path)
    assert table["tomo_name"].tolist() == ["Tomograms/TS_01.mrc"] * 2
    assert table["class_number"].tolist() == [0, 0]
    assert table["x"].tolist() == [10.0, 11.0]


@pytest.mark.parametrize("shape", [(50, 100, 200), (51, 101, 201)])
def test_relion5_centred_angstrom_coordinates(tmp_path, shape):
    # RELION 5: pixel = Å / pixel size + size / 2 (float division; odd sizes give .5 centres)
    path = tmp_path / "r5.star"
    path.write_text(
        "data_particles\n\nloop_\n_rlnTomoName\n_rlnCenteredCoordinateXAngst\n"
        "_rlnCenteredCoordinateYAngst\n_rlnCenteredCoordinateZAngst\n"
        "TS_01 0.0 0.0 0.0\nTS_01 -100.0 250.0 40.0\n"
    )
    nz, ny, nx = shape
    table = read_particles(path, tomogram_shape=shape, voxel_size=10.0)
    np.testing.assert_allclose(table[["x", "y", "z"]].iloc[0], [nx / 2, ny / 2, nz / 2])
    np.testing.assert_allclose(
        table[["x", "y", "z"]].iloc[1], [nx / 2 - 10, ny / 2 + 25, nz / 2 + 4]
    )
    assert table.attrs["format"] == "relion5"
    with pytest.raises(InputError, match=r"r5\.star.*RELION-5.*tomogram's shape and voxel size"):
        read_particles(path)
    with pytest.raises(InputError, match="tomogram_shape must be three positive integers"):
        read_particles(path, tomogram_shape=(10, 10), voxel_size=1.0)


def test_relion5_file_spanning_several_tomograms(tmp_path):
    path = tmp_path / "multi.star"
    path.write_text(
        "data_particles\nloop_\n_rlnTomoName\n_rlnCenteredCoordinateXAngst\n"
        "_rlnCenteredCoordinateYAngst\n_rlnCenteredCoordinateZAngst\n"
        "TS_01 10.0 0 0\nTS_02 10.0 0 0\n"
    )
    shapes = {"TS_01": (10, 20, 30), "TS_02": (100, 200, 300)}
    table = read_particles(path, tomogram_shape=shapes, voxel_size={"TS_01": 5.0, "TS_02": 10.0})
    np.testing.assert_allclose(table["x"], [15.0 + 2.0, 150.0 + 1.0])
    np.testing.assert_allclose(table["z"], [5.0, 50.0])
    assert "voxel_size" not in table.attrs  # two different voxel sizes
    with pytest.raises(InputError, match="need the shape and voxel size of tomogram 'TS_02'"):
        read_particles(path, tomogram_shape={"TS_01": (10, 20, 30)}, voxel_size=5.0)
    # A first pass that only wants the tomogram names:
    names_only = read_particles(path, allow_missing_geometry=True)
    assert names_only["tomo_name"].tolist() == ["TS_01", "TS_02"]
    assert np.isnan(particle_zyx(names_only)).all()
    # Each particle is checked against its own tomogram:
    pixels = tmp_path / "multi4.star"
    pixels.write_text(
        "data_particles\nloop_\n_rlnTomoName\n_rlnCoordinateX\n_rlnCoordinateY\n"
        "_rlnCoordinateZ\nTS_01 25 5 5\nTS_02 250 5 5\n"
    )
    read_particles(pixels, tomogram_shape=shapes)
    swapped = {"TS_01": shapes["TS_02"], "TS_02": shapes["TS_01"]}
    with pytest.raises(
        InputError, match=r"1 of 2 particles .* 30 x 20 x 10 .* particle 2 at x=250"
    ):
        read_particles(pixels, tomogram_shape=swapped)


def test_relion5_write_read_round_trip(tmp_path):
    table = make_particle_table([[10.0, 20.5, 30.25], [0.0, 0.0, 0.0]], class_number=[1, 2])
    path = tmp_path / "out5.star"
    write_particles(table, path, relion5=True, tomogram_shape=(41, 64, 64), voxel_size=8.0)
    columns = starfile.read(path).columns.tolist()
    assert "rlnCenteredCoordinateXAngst" in columns and "rlnCoordinateX" not in columns
    back = read_particles(path, tomogram_shape=(41, 64, 64), voxel_size=8.0)
    np.testing.assert_allclose(particle_zyx(back), particle_zyx(table), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        voxels_to_centred([[32.0, 32.0, 20.5]], (41, 64, 64), 8.0), [[0.0, 0.0, 0.0]]
    )
    np.testing.assert_allclose(
        centred_to_voxels([[8.0, 0, 0]], (41, 64, 64), 8.0), [[33.0, 32.0, 20.5]]
    )
    with pytest.raises(InputError, match="relion5=True needs tomogram_shape and voxel_size"):
        write_particles(table, path, relion5=True)


def test_subtomogram_list_resolves_relative_image_names(tmp_path):
    folder = tmp_path / "job"
    (folder / "sub").mkdir(parents=True)
    path = folder / "particles.star"
    path.write_text(
        "data_particles\nloop_\n_rlnImageName\n_rlnClassNumber\n"
        "sub/a.mrc 1\nsub/b.mrc 2\n/abs/c.mrc 1\n"
    )
    table = read_particles(path)
    assert table["image_name"].tolist() == [
        str(folder / "sub/a.mrc"),
        str(folder / "sub/b.mrc"),
        "/abs/c.mrc",
    ]
    assert np.isnan(particle_zyx(table)).all()
    assert table.attrs["format"] == "subtomograms"


def test_relion_project_relative_image_names_are_found_from_a_parent_folder(tmp_path):
    """RELION writes names relative to the project folder, not to the STAR file."""
    project = tmp_path / "project"
    star_dir = project / "Extract" / "job012"
    (star_dir / "Subtomograms").mkdir(parents=True)
    new_mrc(star_dir / "Subtomograms" / "p1.mrc", np.zeros((4, 4, 4), dtype=np.float32))
    path = star_dir / "particles.star"
    path.write_text("data_particles\nloop_\n_rlnImageName\nExtract/job012/Subtomograms/p1.mrc\n")
    table = read_particles(path)
    assert table["image_name"][0] == str(star_dir / "Subtomograms" / "p1.mrc")


def test_unknown_columns_are_ignored_and_origin_shifts_warned(tmp_path):
    path = tmp_path / "extra.star"
    path.write_text(
        "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
        "_myToolScore\n_rlnOriginXAngst\n1 2 3 hello 4.5\n"
    )
    with pytest.warns(InputWarning, match="rlnOriginX/Y/Z shifts are not applied"):
        table = read_particles(path)
    assert list(table.columns) == PARTICLE_COLUMNS and table["x"][0] == 1.0


def test_header_only_star_is_an_empty_table(tmp_path):
    path = tmp_path / "none.star"
    path.write_text("data_particles\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n")
    table = read_particles(path)
    assert len(table) == 0 and list(table.columns) == PARTICLE_COLUMNS


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty STAR file"),
        ("# only a comment\n\n", "empty STAR file"),
        ("x y z\n1 2 3\n", "not a STAR file"),
        (
            "data_particles\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n1 2\n",
            r"no particle block.*rlnAngleRot, rlnAngleTilt",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n",
            "but not rlnCoordinateZ",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 abc\n",
            r"particle 1: rlnCoordinateZ = 'abc' is not a number",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 inf\n",
            "not finite",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n_rlnClassNumber\n1 2 3 -1\n",
            "not a non-negative integer",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n_rlnClassNumber\n1 2 3 1.5\n",
            "not a non-negative integer",
        ),
        (
            "data_particles\nloop_\n_rlnImageName\n000001@stack.mrcs\n",
            r"image in a stack \(n@file\)",
        ),
        (
            "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 3 4\n",
            "not a readable STAR file",
        ),
    ],
)
def test_bad_star_files(tmp_path, text, match):
    path = tmp_path / "bad.star"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        read_particles(path)
    assert str(path) in str(info.value)


def test_coordinates_outside_the_tomogram(tmp_path):
    inside = tmp_path / "inside.star"
    write_particles(make_particle_table([[1, 2, 3], [1, 2, 63.4], [0, 0, -0.5]]), inside)
    read_particles(inside, tomogram_shape=(64, 64, 64))  # both round to edge voxels
    path = tmp_path / "p.star"
    write_particles(make_particle_table([[1, 2, 3], [1, 2, 63.4], [1, 2, 63.6]]), path)
    with pytest.raises(InputError, match=r"p\.star: 1 of 3 particles lie outside .* particle 3"):
        read_particles(path, tomogram_shape=(64, 64, 64))


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unsupported particle file type '.txt'"):
        read_particles(tmp_path / "a.txt")
    with pytest.raises(InputError, match="no such file"):
        read_particles(tmp_path / "a.star")


# -------------------------------------------------------------------------------- CSV files


def test_csv_with_class_or_class_number_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("X, Y, Z, class\n1,2,3,1\n4.5,5,6,0\n")
    table = read_particles(path)
    np.testing.assert_array_equal(particle_zyx(table), [[3, 2, 1], [6, 5, 4.5]])
    assert table["class_number"].tolist() == [1, 0]
    path.write_text("x,y,z,class_number\n1,2,3,2\n")
    assert read_particles(path)["class_number"].tolist() == [2]
    path.write_text("x,y,z\n1,2,3\n")
    assert read_particles(path)["class_number"].tolist() == [0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty CSV file"),
        ("1,2,3\n4,5,6\n", "no header row"),
        ("a,b\n1,2\n", "no x, y, z"),
        ("x,y\n1,2\n", "missing coordinate column"),
        ("x,y,z,class,class_number\n1,2,3,1,1\n", "both 'class' and 'class_number'"),
        ("x,y,z\n1,two,3\n", r"data row 1: y = 'two' is not a finite number"),
        ("x,y,z,class\n1,2,3,-2\n", "not a non-negative integer"),
        ("x,y,z,class\n1,2,3,\n", "class is empty"),
    ],
)
def test_bad_csv_files(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        read_particles(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------- writing


def test_write_star_columns_follow_what_the_table_holds(tmp_path):
    path = tmp_path / "w.star"
    write_particles(make_particle_table([[1, 2, 3]]), path)
    assert starfile.read(path).columns.tolist() == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnCoordinateZ",
    ]
    table = make_particle_table(
        [[1, 2, 3], [4, 5, 6]],
        class_number=[0, 3],
        score=[0.5, np.nan],
        probability=[np.nan, 0.75],
        tomo_name="TS_01.mrc",
    )
    write_particles(table, path)
    frame = starfile.read(path)
    assert frame.columns.tolist() == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnCoordinateZ",
        "rlnClassNumber",
        "rlnMaxValueProbDistribution",
        "rlnAutopickFigureOfMerit",
        "rlnTomoName",
    ]
    assert frame["rlnClassNumber"].tolist() == [0, 3]
    assert frame["rlnCoordinateX"].tolist() == [3.0, 6.0]  # XYZ in the file


def test_write_subtomogram_list_writes_names_relative_to_the_star_folder(tmp_path):
    names = [str(tmp_path / "sub" / "a.mrc"), str(tmp_path / "data_x" / "b.mrc")]
    path = tmp_path / "subs.star"
    write_particles(make_particle_table(image_name=names), path)
    text = path.read_text()
    assert "sub/a.mrc" in text and str(tmp_path) not in text
    assert "rlnCoordinateX" not in text
    assert read_particles(path)["image_name"].tolist() == names


def test_write_rejects_names_a_star_file_cannot_hold_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "p.star"
    write_particles(make_particle_table([[1, 2, 3]]), path)
    before = path.read_bytes()
    for name in ("TS#1", 'TS"1', "TS\t1", "nan"):
        with pytest.raises(InputError, match="cannot be stored in a STAR file"):
            write_particles(make_particle_table([[1, 2, 3]], tomo_name=name), path)
    with pytest.raises(InputError, match="relion5=True applies to STAR files only"):
        write_particles(make_particle_table([[1, 2, 3]]), tmp_path / "p.csv", relion5=True)
    with pytest.raises(InputError, match="unsupported particle file type"):
        write_particles(make_particle_table([[1, 2, 3]]), tmp_path / "p.txt")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.star"]


def test_write_csv_columns(tmp_path):
    path = tmp_path / "w.csv"
    write_particles(make_particle_table([[1, 2, 3]], class_number=2), path)
    assert path.read_text() == "x,y,z,class\n3.0,2.0,1.0,2\n"
    write_particles(make_particle_table([[1, 2, 3]], probability=[0.25]), path)
    assert path.read_text().splitlines()[0] == "x,y,z,class,probability"


def test_replace_star_columns_keeps_everything_else_verbatim(tmp_path):
    source = tmp_path / "in.star"
    source.write_text(RELION4)
    out = tmp_path / "out.star"
    replace_star_columns(
        source, out, {"rlnClassNumber": [5, 6], "rlnMaxValueProbDistribution": [0.5, 0.125]}
    )
    blocks = starfile.read(out, always_dict=True, parse_as_string=["rlnTomoName", "rlnCoordinateX"])
    assert list(blocks) == ["optics", "particles"]
    particles = blocks["particles"]
    assert particles["rlnClassNumber"].tolist() == [5, 6]
    assert particles["rlnMaxValueProbDistribution"].tolist() == [0.5, 0.125]
    assert particles["rlnCoordinateX"].tolist() == ["512.000000", "100.000000"]  # as written
    assert particles["rlnTomoName"].tolist() == ["001", "001"]
    assert particles["rlnAngleRot"].tolist() == [12.5, -40.0]
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == ["opticsGroup1"]
    with pytest.raises(InputError, match="3 values for rlnClassNumber but the file lists 2"):
        replace_star_columns(source, out, {"rlnClassNumber": [1, 2, 3]})


# ---------------------------------------------------------------- round trips (hypothesis)

_names = st.text(alphabet="abcXYZ019_-./ ", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s not in ("nan", "NaN")
)
# image names are absolute, normalised paths (what read_particles returns)
_folders = st.text(alphabet="abcXYZ019_- ", min_size=1, max_size=8).filter(lambda s: s.strip() == s)
_coords = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=True)
_maybe = st.one_of(st.just(float("nan")), st.floats(min_value=0.0, max_value=1.0))


@st.composite
def particle_tables(draw, with_images: bool):
    n = draw(st.integers(0, 12))
    zyx = draw(st.lists(st.tuples(_coords, _coords, _coords), min_size=n, max_size=n))
    classes = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    score = draw(st.lists(_maybe, min_size=n, max_size=n))
    prob = draw(st.lists(_maybe, min_size=n, max_size=n))
    tomo = draw(st.one_of(st.just(""), _names))
    images = None
    if with_images:
        folders = draw(st.lists(_folders, min_size=n, max_size=n))
        images = [f"/data/{folder}/p{i}.mrc" for i, folder in enumerate(folders)]
    table = make_particle_table(
        np.array(zyx, dtype=np.float64).reshape(n, 3),
        class_number=classes,
        score=score,
        probability=prob,
        tomo_name=tomo,
        image_name=images,
        source="imported",
    )
    return table


@pytest.mark.parametrize("suffix", [".star", ".csv"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=particle_tables(with_images=False))
def test_round_trip_is_exact(tmp_path, suffix, table):
    path = tmp_path / f"rt{suffix}"
    write_particles(table, path)
    back = read_particles(path)
    pd.testing.assert_frame_equal(back, table, check_exact=True)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=particle_tables(with_images=True))
def test_round_trip_with_image_names_is_exact(tmp_path, table):
    for suffix in (".star", ".csv"):
        path = tmp_path / f"rt{suffix}"
        write_particles(table, path)
        pd.testing.assert_frame_equal(read_particles(path), table, check_exact=True)


def test_module_warnings_do_not_leak_as_errors(tmp_path, volume):
    """A file with a voxel size opens without any warning at all."""
    path = new_mrc(tmp_path / "t.mrc", volume, voxel_size=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_tomogram(path)
        read_mrc(path)


def test_a_huge_class_number_is_refused_with_the_file_named(tmp_path):
    """1e308 is finite and 'integral' but overflows int64 to a negative class (found by
    hypothesis): the STAR reader refuses it and names the file."""
    path = tmp_path / "huge.star"
    path.write_text(
        "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
        "_rlnClassNumber\n1 1 1 1e308\n"
    )
    with pytest.raises(InputError, match=r"huge\.star.*class number"):
        read_particles(path)
