"""The dock's helper process: maps and clusters off the viewer's GIL, cancel, crashes.

It is a real spawned Python process each time (no mock): what the map section runs.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from napari_cryossl._widgets._helper_process import HelperProcess, HelperProcessError
from napari_cryossl.analysis.population import map_and_cluster


@pytest.fixture
def helper():
    """A helper process, stopped at the end of the test whatever happened."""
    helper = HelperProcess()
    yield helper
    helper.close()


def _groups(n=120, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    centres = rng.normal(0, 6, size=(3, 16))
    return (centres[truth] + rng.normal(size=(n, 16))).astype(np.float32), truth


def test_the_helper_gives_what_the_core_gives_and_stays_up_for_the_next_call(helper):
    x, _ = _groups()
    coords, used, groups = helper.run(map_and_cluster, x, method="pca", n_clusters=3)
    expected = map_and_cluster(x, method="pca", n_clusters=3)
    np.testing.assert_allclose(coords, expected[0], rtol=1e-5, atol=1e-5)
    assert used == "pca"
    np.testing.assert_array_equal(groups, expected[2])
    pid = helper._process.pid
    helper.run(map_and_cluster, x[:50], method="pca", n_clusters=2)
    assert helper._process.pid == pid  # kept: imports and numba stay warm
    helper.close()
    assert not helper.running


def test_an_error_in_the_helper_is_raised_here_with_its_message(helper):
    with pytest.raises(ValueError, match="map method must be"):
        helper.run(map_and_cluster, np.zeros((20, 4), np.float32), method="tsne")
    # and the helper still works afterwards
    coords, _used, _clusters = helper.run(map_and_cluster, _groups()[0], method="pca")
    assert coords.shape == (120, 2)


def test_a_cancelled_call_stops_the_helper_and_the_next_call_starts_a_new_one(helper):
    calls = helper.call(time.sleep, 60)
    next(calls)  # the helper is working
    process = helper._process
    assert process.is_alive()
    calls.close()  # what a cancelled worker does to its generator
    assert not process.is_alive() and not helper.running
    coords, _, _ = helper.run(map_and_cluster, _groups()[0], method="pca")
    assert coords.shape == (120, 2)


def test_a_helper_that_dies_mid_call_is_reported_not_waited_for_forever(helper):
    calls = helper.call(time.sleep, 60)
    next(calls)
    os.kill(helper._process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    with pytest.raises(HelperProcessError, match="ended before it answered"):
        for _ in calls:
            pass


def test_calls_from_two_threads_take_turns(helper):
    """The map and the suggestions may ask at once: each gets its own answer."""
    import threading

    x, _ = _groups()
    results = {}

    def ask(name, n):
        results[name] = helper.run(map_and_cluster, x[:n], method="pca")[0].shape

    threads = [threading.Thread(target=ask, args=(k, n)) for k, n in (("a", 60), ("b", 90))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"a": (60, 2), "b": (90, 2)}


def test_a_script_without_a_main_guard_is_not_run_again_in_the_helper(tmp_path):
    """napari scripts often run at top level; the helper must not re-run them."""
    import subprocess
    import sys

    marker = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        f"marker = Path({str(marker)!r})\n"
        "marker.write_text(marker.read_text() + 'x' if marker.exists() else 'x')\n"
        "import numpy as np\n"
        "from napari_cryossl._widgets._helper_process import HelperProcess\n"
        "from napari_cryossl.analysis.population import map_and_cluster\n"
        "helper = HelperProcess()\n"
        "x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)\n"
        "print(helper.run(map_and_cluster, x, method='pca')[0].shape)\n"
        "helper.close()\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "(40, 2)" in run.stdout
    assert marker.read_text() == "x"  # the script ran once, not again in the helper
