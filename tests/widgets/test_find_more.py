"""Find more like these (issue 27) in a real viewer: train a picker from the labels, its
heatmap and picks, the score slider, accept and reject, a second round from the first
picker, cancel, and the event loop while it trains.

A 32x64x64 simulated tomogram (two classes, 20 particles of 12 voxels, SNR 1, as in
tests/test_learned_picker.py) with 5 labelled particles per class; 40 training steps a
round (a few seconds on a 2-core CPU).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMEOUT_MS = 300_000
VOXEL = 10.0
DIAMETER_A = 120.0
STEPS = 40
LABELS_PER_CLASS = 5
#: Largest event-loop gap (ms) allowed while the picker trains (between its first and last
#: training step). The brief's bar is 50 ms; see the module docstring of
#: test_training_widgets.py for why a shared 2-core CI machine needs a margin: measured
#: here, see `test_find_more_round_trip`'s printed record.
MAX_GAP_WHILE_TRAINING_MS = 50.0


@pytest.fixture(scope="module")
def simulated_picker_tomogram(tmp_path_factory):
    """(MRC path, ground truth): the learned picker tests' tomogram, written once."""
    from napari_cryossl.io import write_mrc
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    sim = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=VOXEL, snr=1.0, particle_diameter_a=DIAMETER_A
    )
    volume, truth = simulate_tomogram((32, 64, 64), 20, sim, seed=1)
    path = tmp_path_factory.mktemp("find_more") / "tomo.mrc"
    write_mrc(path, volume, VOXEL)
    return path, truth


@pytest.fixture
def labelled_dock(dock, simulated_picker_tomogram, tmp_path):
    """A dock on a fresh copy of the tomogram, two classes, `LABELS_PER_CLASS` labelled
    particles of each (the rest of the particles not picked yet)."""
    import shutil

    src, truth = simulated_picker_tomogram
    path = tmp_path / "data" / "tomo.mrc"
    path.parent.mkdir()
    shutil.copy(src, path)
    viewer, widget = dock()
    assert widget.data.open_path(path)
    session = widget.session
    session.store.add_class("one")
    session.store.add_class("two")
    for number in (1, 2):
        rows = truth[truth["class_number"] == number].head(LABELS_PER_CLASS)
        session.add_particles(rows[["z", "y", "x"]].to_numpy(float), class_number=number)
    widget.picking.diameter.setValue(DIAMETER_A)
    section = widget.picking.find_more
    section.steps.setValue(STEPS)
    return viewer, widget, session, section, truth


def _wait(qtbot, worker):
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass


def _gaps_while(qtbot, worker) -> dict:
    """Run `worker` to its end with a 10 ms QTimer; the largest gaps between ticks over the
    whole run and between the first and last training step."""
    ticks: list[float] = []
    steps: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    worker.yielded.connect(
        lambda s: steps.append(time.perf_counter()) if s.stage == "train picker" else None
    )
    timer.start()
    _wait(qtbot, worker)
    timer.stop()
    assert len(steps) >= 2, "the training reported no progress"
    during = [t for t in ticks if steps[0] <= t <= steps[-1]]
    gaps = np.diff(ticks) * 1000
    train_gaps = np.diff(during) * 1000 if len(during) > 1 else np.zeros(1)
    return {
        "test": f"find more like these: {STEPS} steps, 32x64x64, 10 labels, CPU, 10 ms QTimer",
        "max_gap_whole_round_ms": float(gaps.max()),
        "max_gap_while_training_steps_ms": float(train_gaps.max()),
        "p99_gap_ms": float(np.percentile(gaps, 99)),
        "training_s": steps[-1] - steps[0],
        "round_s": ticks[-1] - ticks[0],
        "timer_ticks": len(ticks),
    }


def test_find_more_round_trip(labelled_dock, qtbot, monkeypatch):
    import napari_cryossl.ops.picker as picker_ops
    from napari_cryossl.particles.annotations import JUNK_CLASS_NAME
    from napari_cryossl.particles.colors import class_color_table

    viewer, widget, session, section, truth = labelled_dock
    inits = []
    train = picker_ops.train_picker

    def recording(*args, **kwargs):
        inits.append(kwargs.get("init"))
        return (yield from train(*args, **kwargs))

    monkeypatch.setattr(picker_ops, "train_picker", recording)
    assert section.last_picker() is None and not section.accept_button.isEnabled()

    # the section imports torch and MONAI in a worker when it is first shown
    warm = section.warm_up()
    if warm is not None:
        _wait(qtbot, warm)
    assert section.warm_up() is None  # once

    # round 1: train in a worker, the GUI keeps ticking
    worker = section.start()
    assert worker is not None and section.panel.cancel_button.isEnabled()
    record = _gaps_while(qtbot, worker)
    print("GUI responsiveness while the picker trains:", json.dumps(record))
    assert not section.status.is_error, section.status.text()
    first = session.work_dir / "picker.pt"
    assert first.is_file() and section.last_picker() == first and inits == [None]
    assert record["max_gap_while_training_steps_ms"] < MAX_GAP_WHILE_TRAINING_MS, record

    # the heatmap: an additive image of the tomogram's shape, contrast 0..1, lined up in Å
    heat = viewer.layers["picker heatmap"]
    assert heat.data.shape == tuple(session.tomogram.shape)
    assert heat.blending == "additive" and tuple(heat.contrast_limits) == (0.0, 1.0)
    assert 0.0 <= float(heat.data.min()) and float(heat.data.max()) <= 1.0
    assert float(heat.data.max()) > 0.3
    assert np.allclose(heat.scale, session.image_layer.scale)

    # the picks, coloured by class with the dock's colours
    picks = viewer.layers["picker picks"]
    n = len(picks.data)
    assert n > 0
    classes = picks.features["class_number"].to_numpy()
    assert set(classes) <= {1, 2}
    colors = class_color_table(session.store.classes, classes)
    for i, k in enumerate(classes):
        assert np.allclose(picks.border_color[i], colors[int(k)])
    score = picks.features["score"].to_numpy()
    assert np.all((score >= 0.05) & (score <= 1.0))

    # the slider filters the shown picks at once (the data stay)
    section.score.setValue(5)
    assert section.shown_count() == n
    middle = float(np.median(score))
    section.score.setValue(int(np.ceil(100 * middle)) + 1)
    assert 0 <= section.shown_count() < n and len(picks.data) == n
    assert f"of {n}" in section.score_label.text()
    section.score.setValue(5)

    # accept: the best pick becomes a particle of its predicted class
    store_before = len(session.store.table)
    best = int(np.argmax(score))
    predicted = int(classes[best])
    picks.selected_data = {best}
    assert section.accept_selected() == 1
    table = session.store.table
    assert len(table) == store_before + 1
    new = table.iloc[-1]
    assert int(new["class_number"]) == predicted and new["source"] == "auto"
    assert len(picks.data) == n - 1  # no longer a candidate

    # reject: the next pick becomes "not a particle" (a class made for it)
    assert JUNK_CLASS_NAME not in [c["name"] for c in session.store.classes]
    picks.selected_data = {0}
    assert section.reject_selected() == 1
    junk = session.ensure_class(JUNK_CLASS_NAME)
    table = session.store.table
    assert (table["class_number"] == junk).sum() == 1
    # ... and both are saved in the store's file
    from napari_cryossl.particles.annotations import AnnotationStore

    saved = AnnotationStore(session.store.path).table
    assert len(saved) == store_before + 2 and (saved["class_number"] == junk).sum() == 1

    # round 2 continues from the first picker into a new file; the first stays as it was
    first_bytes = first.read_bytes()
    worker = section.start()
    assert worker is not None
    _wait(qtbot, worker)
    assert not section.status.is_error, section.status.text()
    second = session.work_dir / "picker-2.pt"
    assert second.is_file() and section.last_picker() == second
    assert inits == [None, first]
    assert first.read_bytes() == first_bytes
    assert second.read_bytes() != first_bytes
    import torch

    state = torch.load(second, map_location="cpu", weights_only=True)
    assert JUNK_CLASS_NAME in state["class_names"]
    assert viewer.layers["picker picks"] is section.picks_layer  # the same layers, redrawn


def test_cancel_leaves_no_file_and_keeps_the_last_picker(labelled_dock, qtbot):
    viewer, widget, session, section, _truth = labelled_dock
    section.steps.setValue(2)
    worker = section.start()
    _wait(qtbot, worker)
    first = session.work_dir / "picker.pt"
    assert first.is_file()
    before = first.read_bytes()

    section.steps.setValue(100_000)  # minutes: cancelled long before the end
    worker = section.start()
    with qtbot.waitSignal(worker.yielded, timeout=TIMEOUT_MS):
        pass
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=TIMEOUT_MS):
        section.panel.cancel_button.click()
    # no partial file, not even a temporary one
    assert sorted(p.name for p in session.work_dir.iterdir() if "picker" in p.name) == [
        "picker.pt"
    ]
    assert first.read_bytes() == before and section.last_picker() == first
    assert "cancelled" in section.status.text() and "picker.pt is unchanged" in section.status.text()
    assert section.panel.start_button.isEnabled()


def test_find_more_needs_labels(dock, simulated_picker_tomogram, tmp_path):
    import shutil

    src, _ = simulated_picker_tomogram
    path = tmp_path / "tomo.mrc"
    shutil.copy(src, path)
    _viewer, widget = dock()
    assert widget.data.open_path(path)
    section = widget.picking.find_more
    assert section.start() is None
    assert section.status.is_error and "label" in section.status.text()
    assert section.worker is None


def test_the_round_runs_without_a_viewer(simulated_picker_tomogram, tmp_path):
    """The worker's job is a plain generator (tests and scripts call it directly)."""
    from napari_cryossl._widgets.find_more import latest_picker
    from napari_cryossl.io import open_tomogram
    from napari_cryossl.ops.picker import find_more

    path, truth = simulated_picker_tomogram
    tomo = open_tomogram(path)
    progress = []
    gen = find_more(
        [(truth, tomo)], tomo, tmp_path / "picker.pt", steps=3, diameter_px=DIAMETER_A / VOXEL
    )
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert [p.stage for p in progress][0] == "train picker" and progress[-1].stage == "pick"
    assert result.heatmap.shape == tomo.shape and result.heatmap.dtype == np.float32
    assert result.picker == tmp_path / "picker.pt" == latest_picker(tmp_path)
    (tmp_path / "picker-3.pt").write_bytes(b"")
    (tmp_path / "picker-backup.pt").write_bytes(b"")
    assert latest_picker(tmp_path) == tmp_path / "picker-3.pt"


def test_a_broken_last_picker_is_named_and_nothing_is_written(labelled_dock, qtbot):
    _viewer, _widget, session, section, _truth = labelled_dock
    broken = session.work_dir / "picker.pt"
    broken.write_bytes(b"not a checkpoint")
    assert section.last_picker() == broken
    worker = section.start()
    assert worker is not None
    _wait(qtbot, worker)
    assert section.status.is_error and "picker.pt" in section.status.text()
    assert section.panel.progress.format() == "failed"
    assert not (session.work_dir / "picker-2.pt").exists()
    assert section.panel.start_button.isEnabled()
