"""Options declared once: the lists the CLI and the dock offer match what the core builds."""

from __future__ import annotations

import pytest

from napari_cryossl.cli import main
from napari_cryossl.options import MODEL_PRESETS, RECIPE_NAMES, SSL_METHODS, describe


def test_declared_choices_are_what_the_core_builds():
    from napari_cryossl.models import PRESETS
    from napari_cryossl.ssl import SSL_DEFAULTS
    from napari_cryossl.train import PRETRAIN_RECIPES, RECIPES, FinetuneConfig, PretrainConfig

    assert set(MODEL_PRESETS) == set(PRESETS)
    assert set(SSL_METHODS) == set(SSL_DEFAULTS)
    assert set(RECIPE_NAMES) == set(RECIPES) == set(PRETRAIN_RECIPES)
    # a dataclass default is one of its own choices
    for cls in (PretrainConfig, FinetuneConfig):
        for name in ("method", "preset", "recipe", "head_init"):
            try:
                spec = describe(cls, name)
            except KeyError:
                continue
            assert spec.default is None or spec.default in spec.choices


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--label-fraction", "1.5"], "--label-fraction: must be <= 1"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--min-steps", "many"], "--min-steps: expected an integer"),
        (["--recipe", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_bad_option_values_are_refused_by_name(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(tmp_path / "p.star"), "--out", str(tmp_path / "c.pt"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
