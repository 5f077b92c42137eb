"""Semi-supervised fine-tuning (FixMatch): options, pseudo-labels, batches, stop/resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryossl.nn.checkpoints import load_checkpoint
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.train import FinetuneConfig, iter_finetune, last_checkpoint_path, run
from napari_cryossl.train.semi_supervised import (
    FixMatch,
    pseudo_labels,
    unlabelled_batches,
    unlabelled_rows,
    weak_view,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOX = 16


def random_set(labels, seed=0):
    n = len(labels)
    volumes = np.random.default_rng(seed).normal(size=(n, BOX, BOX, BOX)).astype(np.float32)
    return SubtomogramSet.from_arrays(volumes, np.asarray(labels), voxel_size=10.0)


def semi_config(**kw):
    base = dict(
        epochs=2, batch_size=4, device="cpu", min_steps=0, semi_supervised=True,
        unlabelled_ratio=2, pseudo_label_threshold=0.0,
    )
    base.update(kw)
    return FinetuneConfig(**base)


# -- the pieces ----------------------------------------------------------------------------------


def test_unlabelled_rows_are_class_0_and_labels_left_out_never_training_or_validation():
    labels = np.array([1, 0, 2, 1, 0, 2, 1, 2])
    rows = unlabelled_rows(labels, train_rows=[0, 2], val_rows=[5])
    assert rows.tolist() == [1, 3, 4, 6, 7]


def test_pseudo_labels_are_the_top_class_only_where_its_probability_reaches_the_threshold():
    logits = torch.log(
        torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2], [0.01, 0.04, 0.95], [0.1, 0.9, 0.0]])
        + 1e-12
    )
    targets, mask, confidence = pseudo_labels(logits, 0.95)
    assert targets.tolist() == [0, 0, 2, 1]
    assert mask.tolist() == [True, False, True, False]
    assert torch.allclose(confidence, torch.tensor([0.96, 0.5, 0.95, 0.9]), atol=1e-4)
    # no pseudo-label -> no unlabelled loss; the loss is averaged over the whole batch
    fm = FixMatch(0.95, 2.0, None)
    strong = torch.randn(4, 3)
    per_box = torch.nn.functional.cross_entropy(strong, targets, reduction="none")
    expected = 2.0 * (per_box[0] + per_box[2]) / 4
    assert torch.allclose(fm.loss(strong, targets, mask), expected)
    assert float(fm.loss(strong, targets, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_weak_view_is_a_half_turn_that_keeps_the_missing_wedge():
    x = torch.randn(64, 1, 6, 6, 6)
    y = weak_view(x)
    turns = [x, x.flip((3, 4)), x.flip((2, 4)), x.flip((2, 3))]
    kinds = set()
    for i in range(len(x)):
        match = [k for k, t in enumerate(turns) if torch.equal(y[i], t[i])]
        assert match
        kinds.add(match[0])
    assert kinds == {0, 1, 2, 3}
    # a box that lacks the wedge (beam z, tilt axis y) still lacks it after any half-turn
    from napari_cryossl.nn.augment import reapply_wedge

    wedged = reapply_wedge(torch.randn(16, 1, 8, 8, 8), 60.0)
    turned = weak_view(wedged)
    assert torch.allclose(reapply_wedge(turned, 60.0), turned, atol=1e-4)


def test_four_views_label_a_box_by_the_mean_probability_of_its_half_turns():
    class Probe(torch.nn.Module):  # "class 1" exactly when the box's first voxel is positive
        def forward(self, x):
            p = (x[:, 0, 0, 0, 0] > 0).float()
            return torch.stack([1 - p, p], dim=1).clamp(1e-6, 1).log()

    x = -torch.ones(3, 1, 4, 4, 4)
    x[0, 0, 0, 0, 0] = 1.0  # one view of four says class 1: mean 0.25
    x[1, 0, 0, 0, 0] = x[1, 0, 0, 3, 3] = x[1, 0, 3, 0, 3] = 1.0  # three of four: 0.75
    fm = FixMatch(0.7, 1.0, None, views=4)
    targets, mask = fm.pseudo_label(Probe(), x, hidden=np.array([1, 2, 0]), classes=[1, 2])
    assert targets.tolist() == [0, 1, 0]
    assert mask.tolist() == [True, True, True]
    assert fm.metrics() == {"pseudo_label_rate": 1.0, "pseudo_label_accuracy": 1.0}
    fm = FixMatch(0.8, 1.0, None, views=4)
    assert fm.pseudo_label(Probe(), x)[1].tolist() == [False, False, True]


def test_unlabelled_batches_cycle_through_every_row_and_split_over_ranks():
    batches = unlabelled_batches(10, 6, 4, seed=3, epoch=1)
    drawn = np.concatenate(batches)
    assert len(drawn) == 24 and set(drawn[:10].tolist()) == set(range(10))
    again = unlabelled_batches(10, 6, 4, seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    r0 = unlabelled_batches(10, 6, 4, seed=3, epoch=1, rank=0, world_size=2)
    r1 = unlabelled_batches(10, 6, 4, seed=3, epoch=1, rank=1, world_size=2)
    assert all(
        np.array_equal(np.concatenate([a, b]), c) for a, b, c in zip(r0, r1, batches, strict=True)
    )


def test_each_step_pairs_training_labels_with_unlabelled_particles_only(tmp_path):
    from napari_cryossl.train.finetune import _FinetuneJob

    labels = np.array([1, 2] * 8 + [0] * 10)  # 16 labelled, 10 unlabelled
    data = random_set(labels)
    config = semi_config(label_fraction=0.5, val_fraction=0.25)
    job = _FinetuneJob(data, config, tmp_path / "c.pt", init=None, resume=False, distributed=None)
    unlabelled = set(job.unlabelled.tolist())
    assert unlabelled == set(range(16, 26)) | (set(range(16)) - set(job.train_rows) -
                                              set(job.val_rows))
    assert not unlabelled & (set(job.train_rows.tolist()) | set(job.val_rows.tolist()))
    n_steps = 0
    for boxes, marked, rows in job.loader(job.epoch_batches(0)):
        n_l = int((marked >= 0).sum())
        assert (marked[:n_l] > 0).all() and (marked[n_l:] < 0).all()
        assert set(rows[:n_l].tolist()) <= set(job.train_rows.tolist())
        assert set(rows[n_l:].tolist()) <= unlabelled
        assert len(rows) - n_l == 2 * 4  # unlabelled_ratio x batch
        # hidden labels come back for the pseudo-label accuracy: 0 for class 0
        assert np.array_equal((-1 - marked[n_l:]).numpy(), labels[rows[n_l:].numpy()])
        assert boxes.shape[0] == len(rows)
        n_steps += 1
    assert n_steps == job.steps_per_epoch


def test_the_config_checks_the_new_settings():
    from napari_cryossl.io import InputError

    for bad in (
        dict(unlabelled_ratio=0),
        dict(pseudo_label_threshold=1.5),
        dict(unlabelled_weight=-1.0),
    ):
        with pytest.raises(InputError):
            semi_config(**bad).resolved("cpu")


# -- the loop: metrics, no unlabelled particles, stop and resume ---------------------------------


def test_a_semi_supervised_run_reports_its_pseudo_labels_and_says_so_in_the_checkpoint(tmp_path):
    labels = np.array([1, 2, 3] * 6 + [0] * 12)
    out = tmp_path / "c.pt"
    epochs = [s for s in iter_finetune(random_set(labels), semi_config(), out)
              if s.event == "epoch"]
    assert len(epochs) == 2
    for status in epochs:
        assert 0.0 <= status.metrics["pseudo_label_rate"] <= 1.0
        assert np.isfinite(status.loss)
    # threshold 0: every unlabelled particle gets a pseudo-label
    assert epochs[-1].metrics["pseudo_label_rate"] == 1.0
    state = load_checkpoint(out)
    assert "semi-supervised" in state["method"]
    assert state["config"]["semi_supervised"] is True


def test_pseudo_label_accuracy_is_reported_for_labels_left_out(tmp_path):
    labels = np.array([1, 2] * 12)
    epochs = [
        s
        for s in iter_finetune(random_set(labels), semi_config(label_fraction=0.5), tmp_path / "c.pt")
        if s.event == "epoch"
    ]
    assert 0.0 <= epochs[-1].metrics["pseudo_label_accuracy"] <= 1.0


def test_without_unlabelled_particles_it_trains_on_the_labels_and_says_so(tmp_path):
    labels = np.array([1, 2] * 8)
    last = run(iter_finetune(random_set(labels), semi_config(), tmp_path / "c.pt"))
    assert "no unlabelled particles" in last.metrics["note"]
    assert "pseudo_label_rate" not in last.metrics


def test_closing_a_semi_supervised_run_writes_no_output_and_resume_matches_an_unbroken_run(
    tmp_path,
):
    labels = np.array([1, 2, 3] * 6 + [0] * 12)
    data = random_set(labels, seed=4)
    config = semi_config(epochs=3, dropout=0.5, keep_state=True, pseudo_label_threshold=0.3)
    unbroken = tmp_path / "unbroken.pt"
    run(iter_finetune(data, config, unbroken))

    out = tmp_path / "stopped.pt"
    generator = iter_finetune(data, config, out)
    for i, _status in enumerate(generator):
        if i == 4:
            break
    generator.close()  # the dock's cancel, the CLI's Ctrl-C
    assert not out.exists()
    assert last_checkpoint_path(out).exists()
    list(iter_finetune(data, config, out, resume=True))
    a = load_checkpoint(last_checkpoint_path(unbroken))
    b = load_checkpoint(last_checkpoint_path(out))
    assert a.keys() == b.keys()
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k
    assert out.exists()


# -- the command line ----------------------------------------------------------------------------


def test_the_cli_takes_the_semi_supervised_options_into_the_classifier(tmp_path, capsys):
    from napari_cryossl.cli import main
    from napari_cryossl.io import read_particles, write_particles

    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--classes", "2", "--per-class", "8",
                 "--box-size", "16", "--snr", "1.0", "--seed", "1"]) == 0
    table = read_particles(sim / "particles.star")
    table.loc[table.index[::2], "class_number"] = 0  # half of them unlabelled
    star = sim / "partly_labelled.star"
    write_particles(table, star)
    classifier = tmp_path / "c.pt"
    code = main([
        "finetune", str(star), "--out", str(classifier), "--epochs", "1", "--min-steps", "0",
        "--batch-size", "4", "--device", "cpu", "--preset", "rb3d-small",
        "--semi-supervised", "--unlabelled-ratio", "1", "--pseudo-label-threshold", "0.5",
        "--unlabelled-weight", "0.5",
    ])
    assert code == 0
    config = load_checkpoint(classifier)["config"]
    assert config["semi_supervised"] is True
    assert config["unlabelled_ratio"] == 1
    assert config["pseudo_label_threshold"] == 0.5
    assert config["unlabelled_weight"] == 0.5
    captured = capsys.readouterr()
    assert "pseudo_label_rate" in captured.out + captured.err  # the progress line


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_with_three_labels_per_class_the_unlabelled_particles_do_not_hurt(tmp_path):
    """Isolated particles of 6 classes in random 3D orientations (SNR 1, off-centre by up
    to 3 voxels, the set of test_train's floor test): 3 labels per class, the other 102
    training particles unlabelled, 120 held out. Supervised and semi-supervised runs of
    the same length, seed and labels.

    Measured on the 2-core CPU (2026-12-07, loaded; batch 32, 2 unlabelled per labelled,
    threshold 0.7, 300 steps): supervised 0.683 / 0.750, semi-supervised 0.692 / 0.792
    (seeds 0 / 1), the pseudo-label rate rising to 0.71-0.84 of the unlabelled particles;
    floor 0.48 / 0.58. With this test's cheaper settings (batch 16, 1 unlabelled per
    labelled, seeds 0 / 1 / 2, since boxes are centred by a gather (2026-12-07); ~2 min
    per seed): supervised 0.792 / 0.783 / 0.767, semi-supervised 0.758 / 0.717 / 0.767,
    floor 0.583. One seed alone moves by several points with the last bit of a float
    (seed 1 was 0.758 / 0.742 with the Fourier shift), so the means of three seeds are
    compared. Asserted: semi-supervised >= supervised - 0.05 on average, and every run
    above the floor.
    """
    from napari_cryossl.analysis.baselines import floor_accuracy
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.simulate import SimulationConfig, simulate_subtomograms

    cfg = SimulationConfig(n_classes=6, box_size=16, voxel_size=20.0, snr=1.0, n_neighbors=0,
                           max_shift_px=3.0, particle_diameter_a=150.0)
    volumes, labels = simulate_subtomograms(40, cfg, seed=5)
    train, test = np.arange(120), np.arange(120, 240)
    rng = np.random.default_rng(1)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(labels[train] == c), 3, replace=False) for c in range(1, 7)]
    )
    shown = np.zeros(len(train), dtype=np.int64)
    shown[keep] = labels[train][keep]
    data = SubtomogramSet.from_arrays(volumes[train], shown, voxel_size=20.0)
    held_out = SubtomogramSet.from_arrays(volumes[test], labels[test], voxel_size=20.0)
    floor = floor_accuracy(volumes[train][keep], labels[train][keep], volumes[test], labels[test])
    accuracy = {False: [], True: []}
    for seed in (0, 1, 2):
        for semi in (False, True):
            out = tmp_path / f"{semi}_{seed}.pt"
            config = FinetuneConfig(device="cpu", epochs=5, min_steps=300, batch_size=16,
                                    val_fraction=0.0, seed=seed, semi_supervised=semi,
                                    unlabelled_ratio=1, pseudo_label_threshold=0.7)
            last = run(iter_finetune(data, config, out))
            accuracy[semi].append(float((predict(out, held_out, device="cpu").class_numbers
                                         == labels[test]).mean()))
            if semi:
                assert last.metrics["pseudo_label_rate"] > 0.1
    print(f"supervised {accuracy[False]}, semi-supervised {accuracy[True]}, floor {floor:.3f}")
    assert np.mean(accuracy[True]) >= np.mean(accuracy[False]) - 0.05, accuracy
    assert min(accuracy[False] + accuracy[True]) > floor, (accuracy, floor)
