"""Fuzzing the readers: arbitrary bytes must give a table/volume or an InputError, nothing else.

"Nothing else" includes other exception types (IndexError, pandas parser errors, numpy
overflow...), huge allocations from a forged header, and hangs (each test has a timeout).
"""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryossl.io import InputError, open_tomogram, read_mrc, read_particles
from napari_cryossl.particles.annotations import AnnotationStore

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _valid_mrc_bytes() -> bytes:
    import io as _io
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
            mrc.voxel_size = 3.0
        buf = _io.BytesIO(path.read_bytes())
    return buf.getvalue()


VALID_MRC = _valid_mrc_bytes()
# int32 header words worth forging: dims, mode, starts, sampling, cell, axis map, ispg,
# nsymbt, machine stamp; 4-byte offsets into the 1024-byte header.
HEADER_WORDS = [0, 4, 8, 12, 16, 28, 32, 36, 40, 44, 48, 64, 68, 72, 88, 92, 152, 156, 212]
NASTY_INTS = [
    0,
    1,
    -1,
    2,
    3,
    4,
    6,
    12,
    101,
    2**31 - 1,
    -(2**31),
    2**16,
    1024,
    0x44440000,
    0x11110000,
]


def _read_all(path):
    """Every MRC reader; each must return normally or raise InputError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for reader in (open_tomogram, read_mrc):
            try:
                out = reader(path)
            except InputError as err:
                assert str(path) in str(err)
                continue
            data = out.data if hasattr(out, "data") else out[0]
            assert data.ndim == 3
            np.asarray(data[0, 0, :1])  # the mapping is readable


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_as_mrc(tmp_path, data):
    path = tmp_path / "f.mrc"
    path.write_bytes(data)
    _read_all(path)


@pytest.mark.timeout(120)
@FUZZ
@given(cut=st.integers(0, len(VALID_MRC)))
def test_truncated_mrc(tmp_path, cut):
    path = tmp_path / "t.mrc"
    path.write_bytes(VALID_MRC[:cut])
    _read_all(path)


@pytest.mark.timeout(120)
@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(HEADER_WORDS),
            st.one_of(st.sampled_from(NASTY_INTS), st.integers(-(2**31), 2**31 - 1)),
        ),
        min_size=1,
        max_size=6,
    ),
    extra=st.binary(max_size=64),
)
def test_forged_mrc_headers(tmp_path, edits, extra):
    raw = bytearray(VALID_MRC)
    for offset, value in edits:
        raw[offset : offset + 4] = np.int32(value).astype("<i4").tobytes()
    path = tmp_path / "h.mrc"
    path.write_bytes(bytes(raw) + extra)
    _read_all(path)


# ------------------------------------------------------------------------------------ STAR

STAR_TOKENS = [
    "data_",
    "data_particles",
    "data_optics",
    "data_classes",
    "loop_",
    "_rlnCoordinateX",
    "_rlnCoordinateY",
    "_rlnCoordinateZ",
    "_rlnCenteredCoordinateXAngst",
    "_rlnCenteredCoordinateYAngst",
    "_rlnCenteredCoordinateZAngst",
    "_rlnImageName",
    "_rlnTomoName",
    "_rlnClassNumber",
    "_rlnMaxValueProbDistribution",
    "_cryosslSource",
    "_cryosslClassColor",
    "#1",
    "# version 30001",
    "1",
    "-2",
    "3.5",
    "1e308",
    "nan",
    "inf",
    "<NA>",
    '"',
    "'",
    '"a b"',
    "''",
    "TS_01",
    "1@stack.mrcs",
    "sub/a.mrc",
    "#ff0000",
    "manual",
    "\t",
    " ",
    "\n",
    "\n",
    "\n",
    "\r",
    "\x00",
    "é",
]


def _check_particles(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = read_particles(path, **kwargs)
        except InputError as err:
            assert str(path) in str(err)
            return
    assert isinstance(table, pd.DataFrame)


@pytest.mark.timeout(120)
@FUZZ
@given(
    tokens=st.lists(st.sampled_from(STAR_TOKENS), max_size=60),
    sep=st.sampled_from([" ", "\n", "\t"]),
)
def test_random_star_text(tmp_path, tokens, sep):
    path = tmp_path / "r.star"
    path.write_text(sep.join(tokens), encoding="utf-8", newline="")
    _check_particles(path)
    _check_particles(path, tomogram_shape=(10, 20, 30), voxel_size=2.0)
    try:
        AnnotationStore(path)
    except InputError as err:
        assert str(path) in str(err)


CELL_VALUES = [
    "1",
    "-2",
    "3.5",
    "0",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "<NA>",
    "TS_01",
    "1@s.mrcs",
    "sub/a.mrc",
    '"a b"',
    "abc",
]
EXTRA_LABELS = [
    "rlnImageName",
    "rlnTomoName",
    "rlnMicrographName",
    "rlnClassNumber",
    "rlnMaxValueProbDistribution",
    "rlnAutopickFigureOfMerit",
    "rlnOriginXAngst",
    "rlnAngleRot",
]


@st.composite
def structured_star(draw):
    """Well-formed blocks of random cells: they get past the parser to the column checks."""
    base = draw(
        st.sampled_from(
            [
                [],
                ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"],
                [
                    "rlnCenteredCoordinateXAngst",
                    "rlnCenteredCoordinateYAngst",
                    "rlnCenteredCoordinateZAngst",
                ],
            ]
        )
    )
    extras = draw(st.lists(st.sampled_from(EXTRA_LABELS), unique=True, max_size=4))
    labels = base + extras or ["rlnImageName"]
    n = draw(st.integers(0, 5))
    rows = [" ".join(draw(st.sampled_from(CELL_VALUES)) for _ in labels) for _ in range(n)]
    header = "\n".join(f"_{label}" for label in labels)
    optics = draw(
        st.sampled_from(["", "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 abc\n\n"])
    )
    return f"{optics}data_particles\nloop_\n{header}\n" + "\n".join(rows) + "\n"


@pytest.mark.timeout(120)
@FUZZ
@given(text=structured_star())
def test_structured_star_with_random_values(tmp_path, text):
    path = tmp_path / "s.star"
    path.write_text(text, encoding="utf-8", newline="")
    _check_particles(path)
    _check_particles(path, tomogram_shape=(10, 20, 30), voxel_size=2.0)


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_star_and_csv(tmp_path, data):
    for name in ("b.star", "b.csv"):
        path = tmp_path / name
        path.write_bytes(data)
        _check_particles(path)


@pytest.mark.timeout(120)
@FUZZ
@given(
    header=st.lists(
        st.sampled_from(
            [
                "x",
                "y",
                "z",
                "class",
                "class_number",
                "probability",
                "score",
                "image_name",
                "tomo_name",
                "q",
                "1",
            ]
        ),
        max_size=6,
    ),
    rows=st.lists(
        st.lists(
            st.sampled_from(["1", "-1", "2.5", "", "nan", "inf", "a", '"x,y"', "1e400"]), max_size=6
        ),
        max_size=5,
    ),
)
def test_random_csv(tmp_path, header, rows):
    path = tmp_path / "c.csv"
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n")
    _check_particles(path)
