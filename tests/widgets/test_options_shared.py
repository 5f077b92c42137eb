"""The CLI and the dock take their choices, defaults and help from the same settings."""

from __future__ import annotations

import dataclasses


def _parser_action(parser, command: str, dest: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == dest)


def test_cli_and_dock_share_choices_defaults_and_help(dock, monkeypatch):
    from napari_cryossl.base.options import describe
    from napari_cryossl.cli import build_parser
    from napari_cryossl.train import RECIPES, FinetuneConfig, PretrainConfig

    # One change in the settings class: a new default method and a new recipe default.
    method_field = PretrainConfig.__dataclass_fields__["method"]
    monkeypatch.setattr(method_field, "default", "simclr")
    monkeypatch.setitem(RECIPES["default"], "min_steps", 1234)
    monkeypatch.setitem(RECIPES["default"], "epochs", 7)

    parser = build_parser()
    _viewer, widget = dock()
    pre, fine = widget.pretrain, widget.finetune

    # pretraining: method and preset, choices, default and tooltip
    action = _parser_action(parser, "pretrain", "method")
    assert action.default == "simclr" == pre.method.currentData()
    assert tuple(action.choices) == tuple(
        pre.method.itemData(i) for i in range(pre.method.count())
    )
    assert pre.method.toolTip().lower().startswith(describe(PretrainConfig, "method").help)
    action = _parser_action(parser, "pretrain", "preset")
    assert tuple(action.choices) == tuple(
        pre.preset.itemText(i) for i in range(pre.preset.count())
    )
    assert action.default == pre.preset.currentText()

    # fine-tuning: the CLI leaves None ("the recipe's"), which resolves to what the dock shows
    args = parser.parse_args(["finetune", "p.star", "--out", "c.pt"])
    from napari_cryossl.base.options import settings_from_args

    resolved = settings_from_args(FinetuneConfig, args).resolved()
    assert resolved.min_steps == 1234 and args.min_steps is None
    # min. steps: "auto" in the dock, None on the CLI; both resolve per device the same way
    assert fine.min_steps.value() == -1  # auto
    config = settings_from_args(FinetuneConfig, args)
    assert f"{config.resolved('cpu').min_steps} on a CPU" in fine.min_steps.specialValueText()
    assert f"{config.resolved('cuda').min_steps} on a GPU" in fine.min_steps.specialValueText()
    # epochs: "auto" in the dock, None on the CLI: both leave it to the recipe and device
    assert args.epochs is None and fine.epochs.value() == 0
    assert resolved.epochs == 7 and "7 on a CPU" in fine.epochs.specialValueText()
    assert resolved.batch_size == fine.batch_size.value()
    for name, box in (("min_steps", fine.min_steps), ("epochs", fine.epochs)):
        assert _parser_action(parser, "finetune", name).help.startswith(
            describe(FinetuneConfig, name).help
        )
        assert box.toolTip().lower().startswith(describe(FinetuneConfig, name).help[:20].lower())
    # semi-supervised fine-tuning: off on both, the same defaults and help
    action = _parser_action(parser, "finetune", "semi_supervised")
    assert action.default is False is fine.semi_supervised.isChecked()
    assert fine.semi_supervised.toolTip().lower().startswith(action.help[:40].lower())
    for name, box in (
        ("pseudo_label_threshold", fine.pseudo_label_threshold),
        ("unlabelled_ratio", fine.unlabelled_ratio),
    ):
        action = _parser_action(parser, "finetune", name)
        assert box.value() == action.default == getattr(FinetuneConfig(), name)
        assert box.toolTip() == describe(FinetuneConfig, name).tooltip()
        assert action.help.startswith(describe(FinetuneConfig, name).help)
    # every declared option of both settings classes is a CLI argument
    for command, cls in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                assert _parser_action(parser, command, f.name) is not None


def test_picking_options_come_from_pick_settings(dock):
    from napari_cryossl.base.options import describe
    from napari_cryossl.cli import build_parser
    from napari_cryossl.particles.picking import AUTO_THRESHOLD, PickSettings

    parser = build_parser()
    _viewer, widget = dock()
    pick = widget.picking
    threshold = describe(PickSettings, "threshold")
    assert _parser_action(parser, "pick", "threshold").help.startswith(threshold.help)
    assert pick.threshold.toolTip() == threshold.tooltip()
    assert pick.threshold.value() == AUTO_THRESHOLD  # what the CLI's default (None) means
    assert tuple(_parser_action(parser, "pick", "polarity").choices) == ("dark", "bright")
    assert pick.max_picks.toolTip() == describe(PickSettings, "max_particles").tooltip()


def test_prediction_and_gradcam_sections_take_their_devices_from_the_settings(dock, monkeypatch):
    from napari_cryossl.analysis.predict import PredictSettings
    from napari_cryossl.analysis.saliency import GradcamSettings
    from napari_cryossl.base.options import DEVICE_CHOICES, describe
    from napari_cryossl.cli import build_parser

    # a new default device in the settings reaches both the CLI and the dock
    for cls in (PredictSettings, GradcamSettings):
        monkeypatch.setattr(cls.__dataclass_fields__["device"], "default", "cpu")
    parser = build_parser()
    _viewer, widget = dock()
    for command, section, cls in (
        ("predict", widget.prediction, PredictSettings),
        ("gradcam", widget.saliency, GradcamSettings),
    ):
        box = section.device
        assert tuple(box.itemText(i) for i in range(box.count())) == DEVICE_CHOICES
        assert box.currentText() == "cpu" == _parser_action(parser, command, "device").default
        assert box.toolTip() == describe(cls, "device").tooltip()


def test_cli_and_dock_offer_the_same_suggestion_strategies(dock):
    from napari_cryossl.analysis.population import SuggestSettings
    from napari_cryossl.base.options import describe
    from napari_cryossl.cli import build_parser

    action = _parser_action(build_parser(), "suggest", "strategy")
    _viewer, widget = dock()
    box = widget.population.suggest_strategy
    assert tuple(action.choices) == tuple(box.itemText(i) for i in range(box.count()))
    assert action.default == box.currentText() == "auto"
    assert box.toolTip().lower().startswith(describe(SuggestSettings, "strategy").help[:20].lower())
