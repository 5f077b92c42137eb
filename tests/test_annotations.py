"""AnnotationStore: persisted on every change, crash-safe, loud about corrupt files."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryossl.io import InputError, read_particles
from napari_cryossl.particles.annotations import (
    DEFAULT_PALETTE,
    STORE_COLUMNS,
    AnnotationStore,
    store_path_for,
)

HERE = Path(__file__).parent


@pytest.fixture
def store(tmp_path) -> AnnotationStore:
    return AnnotationStore(tmp_path / "tomo.cryossl.star", tomo_name="tomo.mrc")


def reopened(store: AnnotationStore) -> AnnotationStore:
    return AnnotationStore(store.path)


def assert_same(a: AnnotationStore, b: AnnotationStore) -> None:
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.classes == b.classes


# ------------------------------------------------------------------------------ basics


def test_new_store_is_empty_and_written_on_first_change(store):
    assert store.classes == []
    assert list(store.table.columns) == STORE_COLUMNS
    assert len(store.table) == 0
    assert not store.path.exists()
    store.add_class("ribosome")
    assert store.path.exists()
    assert reopened(store).classes == [
        {"number": 1, "name": "ribosome", "color": DEFAULT_PALETTE[0]}
    ]


def test_store_path_beside_tomogram_or_in_project(tmp_path):
    assert store_path_for(tmp_path / "TS_01.rec") == tmp_path / "TS_01.cryossl.star"
    assert store_path_for(tmp_path / "a" / "TS_01.mrc", tmp_path / "proj") == (
        tmp_path / "proj" / "TS_01.cryossl.star"
    )
    s = AnnotationStore.for_tomogram(tmp_path / "TS_02.mrc", project_dir=tmp_path / "proj")
    assert s.path == tmp_path / "proj" / "TS_02.cryossl.star"
    assert s.tomo_name == "TS_02.mrc"
    s.add_particles([[1, 2, 3]])
    assert s.table["tomo_name"].tolist() == ["TS_02.mrc"]
    again = AnnotationStore.for_tomogram(tmp_path / "TS_02.mrc", project_dir=tmp_path / "proj")
    assert_same(s, again)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_tomogram_folder_falls_back_to_user_folder(tmp_path, monkeypatch):
    data = tmp_path / "shared"
    data.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home"))
    data.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="not writable"):
            s = AnnotationStore.for_tomogram(data / "TS_01.mrc")
        s.add_class("a")
        assert str(s.path).startswith(str(tmp_path / "home"))
    finally:
        data.chmod(0o755)


def test_store_file_is_plain_star_readable_by_starfile_and_read_particles(store):
    store.add_class("ribosome #80S")  # '#' and spaces survive (strings are quoted)
    store.add_particles([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], class_number=[1, 0], score=[0.5, 0.25])
    blocks = starfile.read(store.path, always_dict=True)
    assert list(blocks) == ["classes", "particles"]
    assert blocks["classes"]["cryosslClassName"].tolist() == ["ribosome #80S"]
    table = read_particles(store.path)
    np.testing.assert_array_equal(table["x"], [3.0, 6.5])
    np.testing.assert_array_equal(table["z"], [1.0, 4.0])
    np.testing.assert_array_equal(table["class_number"], [1, 0])


# ---------------------------------------------------------------------- every edit saves


EDITS = [
    ("add_class", lambda s: s.add_class("membrane", "#ABC")),
    ("add_particles", lambda s: s.add_particles([[7, 8, 9], [1, 1, 1]], class_number=2, score=0.3)),
    ("remove_particles", lambda s: s.remove_particles([0])),
    ("move_particles", lambda s: s.move_particles([1], [[2.5, 3.5, 4.5]])),
    ("set_class", lambda s: s.set_class([0, 2], 2)),
    ("set_predictions", lambda s: s.set_predictions([1, 2, 0], [0.9, 0.6, np.nan])),
    ("rename_class", lambda s: s.rename_class(1, "ribosome 80S")),
    ("set_class_color", lambda s: s.set_class_color(2, (0.0, 1.0, 0.0))),
    ("clear_predictions", lambda s: s.clear_predictions()),
    ("delete_class", lambda s: s.delete_class(1)),
]


def test_every_edit_is_on_disk_immediately(store):
    store.add_class("ribosome")
    store.add_particles([[0, 0, 0], [1, 2, 3]], class_number=1)
    for name, edit in EDITS:
        edit(store)
        again = reopened(store)
        pd.testing.assert_frame_equal(store.table, again.table, obj=name)
        assert store.classes == again.classes, name
    table = store.table
    assert len(table) == 3
    assert set(table["class_number"]) <= {0, 2}
    assert store.classes == [{"number": 2, "name": "membrane", "color": "#00ff00"}]


def test_delete_class_unlabels_and_clears_its_predictions_without_renumbering(store):
    for name in ("a", "b", "c"):
        store.add_class(name)
    store.add_particles(np.zeros((3, 3)), class_number=[1, 2, 3])
    store.set_predictions([2, 2, 3], [0.8, 0.7, 0.6])
    store.delete_class(2)
    table = store.table
    assert table["class_number"].tolist() == [1, 0, 3]
    assert table["predicted_class"].tolist() == [0, 0, 3]
    assert np.isnan(table["probability"][:2]).all() and table["probability"][2] == 0.6
    assert store.class_numbers() == [1, 3]
    assert store.add_class("d") == 4


def test_default_colours_are_distinct_and_reused_after_delete(store):
    numbers = [store.add_class() for _ in range(4)]
    colors = [c["color"] for c in store.classes]
    assert colors == list(DEFAULT_PALETTE[:4])
    assert [c["name"] for c in store.classes] == [f"class {n}" for n in numbers]
    store.delete_class(2)
    store.add_class("e")
    assert store.classes[-1]["color"] == DEFAULT_PALETTE[1]


@pytest.mark.parametrize(
    ("color", "expected"),
    [
        ("#FF8000", "#ff8000"),
        ("f80", "#ff8800"),
        ((1.0, 0.5, 0.0, 1.0), "#ff8000"),
        ([255, 0, 0], "#ff0000"),
        ("red", "#ff0000"),
    ],
)
def test_colours_are_normalised(store, color, expected):
    store.add_class("a", color)
    assert store.classes[0]["color"] == expected


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.add_class("A"), "already called"),
        (lambda s: s.add_class("b", "not-a-colour"), "not a colour"),
        (lambda s: s.add_class('say "hi"'), "cannot be saved"),
        (lambda s: s.rename_class(9, "x"), "no class 9"),
        (lambda s: s.add_particles([[1, 2, 3]], class_number=5), "class 5 is not defined"),
        (lambda s: s.add_particles([[1, np.nan, 3]]), "finite"),
        (lambda s: s.add_particles([[1, 2]]), r"\(N, 3\)"),
        (lambda s: s.add_particles([[1, 2, 3]], source="guess"), "unknown source"),
        (lambda s: s.set_class([5], 1), "out of range"),
        (lambda s: s.set_class([0], 3), "not defined"),
        (lambda s: s.set_predictions([1], [0.5]), "predictions for 1"),
        (lambda s: s.set_predictions([1, 1], [0.5, 1.5]), r"\[0, 1\]"),
        (lambda s: s.move_particles([0, 1], [[1, 1, 1]]), "1 positions for 2"),
    ],
)
def test_bad_edits_raise_and_change_nothing(store, edit, match):
    store.add_class("a")
    store.add_particles([[0, 0, 0], [1, 1, 1]])
    before = store.path.read_bytes()
    table, classes = store.table, store.classes
    with pytest.raises(InputError, match=match):
        edit(store)
    assert store.path.read_bytes() == before
    pd.testing.assert_frame_equal(store.table, table)
    assert store.classes == classes


def test_failed_save_keeps_memory_and_file_consistent(tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    s = AnnotationStore(folder / "t.cryossl.star")
    s.add_class("a")
    shutil.rmtree(folder)  # the next save cannot happen
    with pytest.raises(OSError):
        s.add_particles([[1, 2, 3]])
    assert len(s.table) == 0  # the object did not move ahead of the (missing) file


def test_on_change_reports_kind_and_indices_and_survives_a_bad_listener(store):
    seen = []

    def broken(change):
        raise RuntimeError("listener bug")

    store.on_change.append(broken)
    store.on_change.append(seen.append)
    with pytest.raises(RuntimeError, match="listener bug"):
        store.add_class("a")
    assert [c.kind for c in seen] == ["classes"]
    assert reopened(store).classes[0]["name"] == "a"  # saved before listeners ran
    store.on_change.remove(broken)
    store.add_particles([[1, 1, 1], [2, 2, 2]])
    store.set_class([1], 1)
    assert [c.kind for c in seen] == ["classes", "particles", "labels"]
    np.testing.assert_array_equal(seen[1].indices, [0, 1])
    np.testing.assert_array_equal(seen[2].indices, [1])


# ------------------------------------------------------------------------ corrupt files


def _good_store(tmp_path) -> Path:
    s = AnnotationStore(tmp_path / "t.cryossl.star")
    s.add_class("a")
    s.add_class("b")
    s.add_particles([[1, 2, 3], [4, 5, 6]], class_number=[1, 2])
    return s.path


def _strip_checksum(text: str) -> str:
    first, _, rest = text.partition("\n")
    assert first.startswith("# napari-cryossl annotations; sha256")
    return rest


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        # damage the checksum catches (a row cut after a complete field would parse)
        (lambda text: text.rstrip()[:-3], "damaged annotation file"),
        (lambda text: text.replace("4.0", "4.5"), "damaged annotation file"),
        # a hand-edited file (checksum line removed) is validated field by field
        (lambda text: _strip_checksum(text).rstrip()[:-30], "is not a number"),
        (lambda text: _strip_checksum(text).replace("data_classes", "data_other"), "data_classes"),
        (lambda text: _strip_checksum(text).replace('2\t"b"', '7\t"b"'), "does not define"),
        (
            lambda text: _strip_checksum(text).replace("rlnCoordinateY", "rlnSomethingElse"),
            "missing column",
        ),
        (lambda text: _strip_checksum(text).replace('"manual"', '"magic"', 1), "unknown source"),
        (lambda text: _strip_checksum(text).replace('"#ff7f0e"', '"blurple"'), "not a colour"),
        (lambda text: "", "empty"),
        (lambda text: "\x00\x01binary", "not a STAR text file"),
    ],
)
def test_corrupt_store_raises_naming_the_file_and_is_not_overwritten(tmp_path, corrupt, match):
    path = _good_store(tmp_path)
    bad = corrupt(path.read_text())
    path.write_text(bad)
    with pytest.raises(InputError, match=match) as info:
        AnnotationStore(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError):
        AnnotationStore.for_tomogram(tmp_path / "t.mrc")
    assert path.read_text() == bad


def test_hand_edited_store_without_checksum_is_accepted(tmp_path):
    path = _good_store(tmp_path)
    before = AnnotationStore(path)
    path.write_text(_strip_checksum(path.read_text()).replace('"a"', '"renamed"'))
    after = AnnotationStore(path)
    pd.testing.assert_frame_equal(before.table, after.table)
    assert after.classes[0]["name"] == "renamed"


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "t.cryossl.star"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".t.cryossl.star.{pid}-0badc0de.tmp.star"
    stale.write_text("half a file")
    live = tmp_path / f".t.cryossl.star.{os.getpid()}-00000001.tmp.star"
    live.write_text("being written by us")
    other = tmp_path / ".notes.txt.123-ab.tmp.txt"
    other.write_text("not ours")
    AnnotationStore(path)
    assert not stale.exists() and live.exists() and other.exists()


# ------------------------------------------------------------------------------ kill -9


def test_kill_minus_9_loses_at_most_the_last_edit(tmp_path):
    """A writer editing in a loop is SIGKILLed at random moments, several times.

    After each kill the file must load, hold exactly edits 0..m-1 (a prefix), and m must
    cover every edit the writer had acknowledged (printed after its save returned).
    """
    path = tmp_path / "tomo.cryossl.star"
    rng = random.Random(20261123)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    acknowledged = 0
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_kill_writer.py"), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            first = proc.stdout.readline()
            assert first.startswith("ready"), proc.stderr.read()
            assert int(first.split()[1]) >= acknowledged
            # Let it run a random while: a few edits to a few dozen, at no particular phase.
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            rest = proc.stdout.read()
        finally:
            proc.kill()
            proc.wait()
        acks = [int(line) for line in rest.split()]
        if acks:
            acknowledged = acks[-1] + 1
        store = AnnotationStore(path)  # must load after every kill
        table = store.table
        m = len(table)
        assert acknowledged <= m <= acknowledged + 1
        np.testing.assert_array_equal(table["x"], np.arange(m, dtype=float))
        np.testing.assert_array_equal(table["z"], np.arange(m, dtype=float))
        np.testing.assert_array_equal(table["class_number"], 1 + np.arange(m) % 2)
        assert [c["number"] for c in store.classes] == [1, 2]
        acknowledged = m
    assert acknowledged > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temps cleaned up
