"""The CZII challenge's picking metric (`napari_cryossl.particles.picking_metrics`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cryossl.particles.picking_metrics import (
    CZII_RADII_A,
    CZII_WEIGHTS,
    fbeta,
    match_one_to_one,
    score_picks,
)


def _table(zyx, kinds, tomo="t1"):
    zyx = np.asarray(zyx, dtype=float).reshape(-1, 3)
    return pd.DataFrame(
        {"x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0], "kind": list(kinds), "tomo_name": tomo}
    )


RADII = {"big": 10.0, "small": 4.0}


def _truth():
    rng = np.random.default_rng(0)
    zyx = rng.uniform(0, 200, size=(20, 3))
    return _table(zyx, ["big"] * 10 + ["small"] * 10)


def test_a_perfect_pick_set_scores_one():
    truth = _truth()
    score = score_picks(truth, truth.copy(), RADII)
    assert score.fbeta == pytest.approx(1.0)
    assert score.recall == 1.0 and score.precision == 1.0
    for k in score.kinds.values():
        assert (k.tp, k.fp, k.fn) == (10, 0, 0)
        assert k.picks_per_particle == 1.0


def test_the_hit_reach_is_half_the_radius_boundary_included():
    truth = _table([[50, 50, 50]], ["big"])
    for offset, hit in ((4.9, True), (5.0, True), (5.1, False)):
        picks = _table([[50, 50, 50 + offset]], ["big"])
        k = score_picks(truth, picks, RADII).kinds["big"]
        assert (k.tp, k.fp, k.fn) == ((1, 0, 0) if hit else (0, 1, 1)), offset
    # a pick of the wrong kind is no hit, however close
    k = score_picks(truth, _table([[50, 50, 50]], ["small"]), RADII)
    assert k.kinds["big"].fn == 1 and k.kinds["small"].fp == 1


def test_matching_is_one_to_one_and_maximal():
    # two picks near one particle: one hit, one false pick
    truth = _table([[0, 0, 0]], ["big"])
    picks = _table([[0, 0, 1], [0, 0, -1]], ["big", "big"])
    k = score_picks(truth, picks, RADII).kinds["big"]
    assert (k.tp, k.fp, k.fn) == (1, 1, 0)
    assert k.picks_per_particle == 2.0
    # greedy by distance would pair the closer pick with the first particle and leave
    # the second particle unmatched; the maximum matching finds both
    match = match_one_to_one([[0, 0, 0], [0, 0, 3]], [[0, 0, 1.4], [0, 0, -1]], 2.0)
    np.testing.assert_array_equal(match, [1, 0])


def test_counts_are_pooled_over_tomograms_not_averaged():
    t1 = _table([[10, 10, 10]], ["big"], "a")
    t2 = _table([[10, 10, 10], [80, 80, 80], [150, 150, 150]], ["big"] * 3, "b")
    truth = pd.concat([t1, t2], ignore_index=True)
    # tomogram a: its particle found; b: one of three; a pick at b's position in a is false
    picks = pd.concat(
        [
            _table([[10, 10, 10], [80, 80, 80]], ["big", "big"], "a"),
            _table([[10, 10, 10]], ["big"], "b"),
        ],
        ignore_index=True,
    )
    k = score_picks(truth, picks, {"big": 10.0}).kinds["big"]
    assert (k.tp, k.fp, k.fn) == (2, 1, 2)
    assert k.recall == pytest.approx(0.5) and k.precision == pytest.approx(2 / 3)
    # the mean of per-tomogram F-beta would differ: pooling is what the challenge does
    per_tomo = np.mean([fbeta(0.5, 1.0), fbeta(1.0, 1 / 3)])
    assert k.fbeta == pytest.approx(fbeta(2 / 3, 0.5)) and k.fbeta != pytest.approx(per_tomo)


def test_beta_four_weighs_recall_sixteen_times():
    assert fbeta(1.0, 1.0) == 1.0 and fbeta(0.0, 0.0) == 0.0
    # F_beta = (1 + b²) / (b²/R + 1/P): recall's term has 16 times the weight
    assert fbeta(0.5, 1.0) == pytest.approx(17 / (16 + 2))
    assert fbeta(1.0, 0.5) == pytest.approx(17 / (32 + 1))
    assert fbeta(0.5, 1.0) > 0.9 > 0.6 > fbeta(1.0, 0.5)
    assert fbeta(0.5, 1.0, beta=1.0) == pytest.approx(fbeta(1.0, 0.5, beta=1.0))
    # many false picks cost little, missed particles a lot
    truth = _table(np.arange(30).reshape(10, 3) * 10, ["big"] * 10)
    noisy = pd.concat([truth, _table(np.arange(30).reshape(10, 3) * 10 + 500, ["big"] * 10)])
    half = truth.iloc[:5]
    big = {"big": 10.0}
    assert score_picks(truth, noisy, big).fbeta > 0.9 > 0.6 > score_picks(truth, half, big).fbeta


def test_weighted_mean_over_kinds_and_zero_weight_kinds_are_not_scored():
    truth = _truth()
    picks = pd.concat([truth[truth["kind"] == "big"], truth[truth["kind"] == "small"].iloc[:5]])
    score = score_picks(truth, picks, RADII)
    f_small = fbeta(1.0, 0.5)
    assert score.kinds["small"].fbeta == pytest.approx(f_small)
    assert score.fbeta == pytest.approx((1.0 + f_small) / 2)
    score = score_picks(truth, picks, RADII, weights={"big": 1.0, "small": 2.0})
    assert score.fbeta == pytest.approx((1.0 + 2 * f_small) / 3)
    score = score_picks(truth, picks, RADII, weights={"big": 1.0, "small": 0.0})
    assert score.fbeta == pytest.approx(1.0) and score.recall == 1.0
    assert score.kinds["small"].recall == 0.5  # still reported
    assert CZII_WEIGHTS["beta-amylase"] == 0 and set(CZII_WEIGHTS) == set(CZII_RADII_A)


def test_picks_on_clutter_are_false_picks_and_counted():
    truth = _table([[10, 10, 10], [50, 50, 50]], ["big", "big"])
    picks = _table([[10, 10, 10], [100, 100, 100], [150, 150, 150]], ["big"] * 3)
    on_clutter = np.array([False, True, False])  # the second lies on a gold bead
    k = score_picks(truth, picks, RADII, on_clutter=on_clutter).kinds["big"]
    assert (k.tp, k.fp, k.fn, k.fp_on_clutter) == (1, 2, 1, 1)
    # a hit on clutter is still a hit (the particle is there), and not counted as junk
    k = score_picks(truth, picks, RADII, on_clutter=[True, False, False]).kinds["big"]
    assert (k.tp, k.fp_on_clutter) == (1, 0)
    with pytest.raises(ValueError, match="on_clutter"):
        score_picks(truth, picks, RADII, on_clutter=[True])


def test_empty_tables_and_unknown_kinds():
    truth = _truth()
    empty = truth.iloc[:0]
    score = score_picks(truth, empty, RADII)
    assert score.fbeta == 0.0 and score.recall == 0.0 and score.precision == 0.0
    score = score_picks(empty, truth, RADII)
    assert all(k.fp == 10 and k.tp == 0 for k in score.kinds.values())
    # kinds not in radii are ignored; a table without tomo_name is one tomogram
    other = truth.assign(kind="other").drop(columns="tomo_name")
    score = score_picks(truth.drop(columns="tomo_name"), other, RADII)
    assert all(k.n_picks == 0 for k in score.kinds.values())
    assert "weighted mean" in score.table() and score.to_dict()["kinds"]["big"]["n_true"] == 10
