"""Every user-facing option declared once, on the settings dataclass that uses it.

A settings dataclass (``train.PretrainConfig``, ``train.FinetuneConfig``, ...) declares
each option a user can set with ``option(default, help, ...)``: its default, its
choices, its unit, its lower bound and its help text. The command line builds its
arguments from those declarations (``add_arguments``) and turns the parsed arguments
back into settings (``settings_from_args``); the napari widgets take their choices,
defaults and tooltips from the same place (``describe``). So a default or a choice is
written once, and the CLI and the dock cannot disagree.

Plain Python (no torch, no Qt): the CLI's ``--help`` and the widgets import it at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Encoder presets (``models.PRESETS`` builds them; tests check that the two agree).
MODEL_PRESETS = ("rb3d-small", "rb3d")
#: Self-supervised methods and their display names (``ssl.SSL_DEFAULTS`` holds their
#: hyper-parameters; tests check that the two agree).
SSL_METHODS = {
    "moco": "MoCo v2",
    "simclr": "SimCLR",
    "swav": "SwAV",
    "simsiam": "SimSiam",
    "byol": "BYOL",
}
#: Recipes of ``train.RECIPES`` and ``train.PRETRAIN_RECIPES``.
RECIPE_NAMES = ("default", "paper")
#: Devices every machine has; the widgets add "cuda:N" for each GPU found.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Pretraining epochs the dock proposes on a CPU (the methods' own, 200 for MoCo, need a
#: GPU; 10 epochs of rb3d-small over a few hundred particles take minutes on a laptop).
CPU_PRETRAIN_EPOCHS = 10
#: ... and at most about this many optimiser steps from the CLI on a CPU when --epochs is
#: not given: a MoCo step of rb3d-small on 32^3 boxes takes about 3 s on a busy 2-core
#: CPU (docs/benchmarks.md), so at most about 30 minutes.
CPU_PRETRAIN_STEPS = 600
#: Fine-tuning's minimum number of steps on a CPU when neither --epochs nor --min-steps is
#: given (the default recipe's 1,500 is for a GPU): what `cryossl demo` trains for on a CPU.
CPU_FINETUNE_MIN_STEPS = 800
WORKERS_HELP = "data-loading worker processes"
DEVICE_HELP = "auto (the GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N"
BATCH_HELP = "subtomograms per step (lower it if the GPU runs out of memory)"


def device_option() -> Any:
    """The ``device`` field every action that runs a network declares."""
    return option("auto", DEVICE_HELP)


def workers_option() -> Any:
    """The ``num_workers`` field (``--workers``) of the actions that load in parallel."""
    return option(0, WORKERS_HELP, minimum=0, flag="--workers")


@dataclass(frozen=True)
class OptionInfo:
    """What a user needs to know about one option (``option`` builds it)."""

    help: str
    choices: tuple | None = None
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None  # CLI flag; default "--" + the field name with dashes
    negate: bool = False  # a True default switched off by the flag (--no-augment)
    cli: bool = True  # False: settable from Python only
    nargs: str | None = None  # argparse's nargs ("+": one or more values)
    metavar: str | None = None  # the value's name in --help


def option(
    default: Any,
    help: str,  # noqa: A002 (the argparse word)
    *,
    choices=None,
    unit: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    negate: bool = False,
    cli: bool = True,
    nargs: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that carries its ``OptionInfo``."""
    info = OptionInfo(
        help=help,
        choices=tuple(choices) if choices is not None else None,
        unit=unit,
        minimum=minimum,
        maximum=maximum,
        flag=flag,
        negate=negate,
        cli=cli,
        nargs=nargs,
        metavar=metavar,
    )
    return field(default=default, metadata={"option": info})


@dataclass(frozen=True)
class OptionSpec:
    """One option of a settings class, as the CLI and the widgets see it."""

    name: str
    default: Any
    type: type
    info: OptionInfo

    @property
    def help(self) -> str:
        return self.info.help

    @property
    def choices(self) -> tuple | None:
        return self.info.choices

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")

    def tooltip(self) -> str:
        """The help text for a widget: first letter capitalised, unit appended."""
        text = self.info.help[:1].upper() + self.info.help[1:]
        return f"{text} ({self.info.unit})" if self.info.unit else text


def _value_type(annotation: str) -> type:
    """int, float, bool or str from a field's annotation (a string under PEP 563)."""
    words = str(annotation).replace("|", " ").replace("None", " ").split()
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if name in words:
            return kind
    return str


def options(settings_cls) -> dict[str, OptionSpec]:
    """The declared options of a settings dataclass, in declaration order."""
    out = {}
    for f in dataclasses.fields(settings_cls):
        info = f.metadata.get("option")
        if info is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = OptionSpec(f.name, default, _value_type(f.type), info)
    return out


def describe(settings_cls, name: str) -> OptionSpec:
    """The ``OptionSpec`` of one option (KeyError names the class when undeclared)."""
    try:
        return options(settings_cls)[name]
    except KeyError:
        raise KeyError(f"{settings_cls.__name__} declares no option {name!r}") from None


def _parse(kind: type, minimum: float | None, maximum: float | None, flag: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag}: expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{flag}: must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{flag}: must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, settings_cls, *, skip=(), only=None) -> None:
    """Add one argument per declared CLI option of ``settings_cls`` (except ``skip``;
    with ``only``, just those)."""
    for spec in options(settings_cls).values():
        if not spec.info.cli or spec.name in skip or (only is not None and spec.name not in only):
            continue
        unit = f" {spec.info.unit}" if spec.info.unit else ""
        if spec.default is not None and spec.type is not bool and "default" not in spec.help:
            value = f"{spec.default:g}" if spec.type is float else str(spec.default)
            text = f"{spec.help} (default {value}{unit})"  # "voxel size (default 10 Å)"
        else:
            text = spec.help + (f" ({spec.info.unit})" if spec.info.unit else "")
        if spec.type is bool:
            if spec.info.negate:
                parser.add_argument(spec.flag, dest=spec.name, action="store_false", help=text)
            else:
                parser.add_argument(spec.flag, dest=spec.name, action="store_true", help=text)
            parser.set_defaults(**{spec.name: spec.default})
            continue
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            type=_parse(spec.type, spec.info.minimum, spec.info.maximum, spec.flag),
            choices=spec.choices,
            default=spec.default,
            nargs=spec.info.nargs,
            metavar=spec.info.metavar
            or (None if spec.choices else spec.flag.lstrip("-").upper().replace("-", "_")),
            help=text,
        )


def settings_from_args(settings_cls, args: argparse.Namespace, **more: Any):
    """Build ``settings_cls`` from parsed arguments (the declared options found in
    ``args``) and ``more`` keyword arguments."""
    values = {
        name: getattr(args, name)
        for name, spec in options(settings_cls).items()
        if spec.info.cli and hasattr(args, name)
    }
    values.update(more)
    return settings_cls(**values)
