"""`cryossl demo`: the README's main job, run at a tiny size."""

from __future__ import annotations

import math

import mrcfile
import pytest

from napari_cryossl.analysis.predict import JUNK_CLASS_NAME
from napari_cryossl.cli.demo import match_picks, run_demo
from napari_cryossl.io import read_particles


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_reports_against_ground_truth(tmp_path, capsys):
    result = run_demo(
        tmp_path,
        preset="cpu",
        device="cpu",
        preset_overrides=dict(
            tomogram_shape=(32, 96, 96),
            n_particles=12,
            n_classes=2,
            box_size=16,
            pretrain_epochs=1,
            finetune_epochs=2,
            finetune_min_steps=0,
            labels_per_class=2,
            batch_size=4,
        ),
    )
    assert list(result.stage_seconds) == [
        "simulate",
        "pick",
        "pretrain",
        "finetune",
        "predict",
        "gradcam",
    ]
    assert result.n_true == 12 and result.n_picked > 0
    assert 0.0 <= result.recall <= 1.0 and result.n_labelled == 4 + 2  # 2 of them junk
    assert 0.0 <= result.accuracy <= 1.0 and math.isclose(result.chance, 1 / 3)  # 2 + junk
    predictions = read_particles(result.files["predictions"])
    assert len(predictions) == result.n_picked
    # 1, 2: the complexes; 3: "not a particle" (junk), the last class
    assert set(predictions["class_number"]) <= {1, 2, 3}
    with (
        mrcfile.open(result.files["gradcam"]) as heat,
        mrcfile.open(result.files["tomogram"]) as tomo,
    ):
        assert heat.data.shape == tomo.data.shape
    out = capsys.readouterr().out
    assert "accuracy on the unlabelled matched picks" in out
    # The demo's particles are real complexes, and the classes carry their names: in the
    # summary and in the classifier, where prediction and the dock read them.
    assert result.class_names == ["TRiC", "apoferritin", JUNK_CLASS_NAME]
    assert "per class: TRiC" in out
    from napari_cryossl.analysis.predict import load_classifier

    _model, classes, names, state = load_classifier(result.files["classifier"])
    assert names == ["TRiC", "apoferritin", JUNK_CLASS_NAME] and classes.tolist() == [1, 2, 3]
    # the false picks: two labelled junk, the others counted and reported
    assert result.junk_class == 3 and result.n_junk_labelled == 2
    assert result.n_false_picks == result.n_picked - round(result.precision * result.n_picked) - 2
    assert 0 <= result.n_flagged_junk <= result.n_false_picks
    assert f"{JUNK_CLASS_NAME}: 3" not in out and f'flagged "{JUNK_CLASS_NAME}"' in out
    assert JUNK_CLASS_NAME in result.per_class
    # confidence is calibrated: the classifier's temperature was used, and the ECE reported
    # (a tiny run has no validation split, hence no temperature: 1)
    assert result.temperature == (state.get("temperature") or 1.0)
    assert 0.0 <= result.ece <= 1.0
    assert "expected calibration error on the unlabelled picks" in out


def test_match_picks_is_one_to_one_within_the_radius():
    import numpy as np

    truth = np.array([[10.0, 10, 10], [30, 30, 30]])
    picks = np.array([[10.5, 10, 10], [11, 10, 10], [30, 30, 38], [29, 30, 30]])
    assert match_picks(truth, picks, radius=3.0).tolist() == [0, -1, -1, 1]
