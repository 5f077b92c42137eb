"""Options declared once: the lists the CLI and the dock offer match what the core builds."""

from __future__ import annotations

import pytest

from napari_cryossl.base.options import MODEL_PRESETS, RECIPE_NAMES, SSL_METHODS, describe
from napari_cryossl.cli import main


def test_declared_choices_are_what_the_core_builds():
    from napari_cryossl.nn.models import PRESETS
    from napari_cryossl.nn.ssl import SSL_DEFAULTS
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


def _parser_action(parser, command: str, dest: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == dest)


@pytest.mark.parametrize(
    ("command", "module", "cls", "name", "new_default"),
    [
        ("predict", "analysis.predict", "PredictSettings", "batch_size", 8),
        ("predict", "analysis.predict", "PredictSettings", "tta", 3),
        ("gradcam", "analysis.saliency", "GradcamSettings", "batch_size", 4),
        ("embed", "analysis.population", "EmbedSettings", "map", "pca"),
        ("suggest", "analysis.population", "SuggestSettings", "n", 7),
        ("simulate", "simulate.config", "SimulationConfig", "snr", 0.1),
        ("simulate", "simulate.config", "SimulationConfig", "box_size", 24),
    ],
)
def test_cli_defaults_and_help_are_the_settings_classes(
    command, module, cls, name, new_default, monkeypatch
):
    """Change a default in the settings class: the CLI's default and help follow."""
    import importlib

    from napari_cryossl.cli import build_parser

    settings_cls = getattr(importlib.import_module(f"napari_cryossl.{module}"), cls)
    monkeypatch.setattr(settings_cls.__dataclass_fields__[name], "default", new_default)
    action = _parser_action(build_parser(), command, name)
    assert action.default == new_default
    assert action.help.startswith(describe(settings_cls, name).help)


def test_simulate_command_line_builds_the_simulation_settings():
    from napari_cryossl.base.options import settings_from_args
    from napari_cryossl.cli import build_parser
    from napari_cryossl.simulate import SimulationConfig

    args = build_parser().parse_args(
        ["simulate", "--out", "x", "--snr", "inf", "--box-size", "24", "--tilt-range", "45"]
    )
    config = settings_from_args(SimulationConfig, args, n_classes=3)
    assert (config.snr, config.box_size, config.tilt_range_deg, config.n_classes) == (
        None, 24, 45.0, 3
    )
    assert config.voxel_size == SimulationConfig().voxel_size  # untouched: the class's default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--out", "x", "--tilt-range", "120"])
