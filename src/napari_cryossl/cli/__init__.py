"""`cryossl`: the command line, the contract for batch users and scripts.

Every subcommand is a thin layer over the GUI-free core, the same functions the
napari widgets call. Heavy libraries (torch, lightly) are imported inside the
commands so that `cryossl --help` answers at once. `main(argv=None)` returns an
exit code so tests call it as a function.

Bad input (a corrupt MRC, an empty STAR file, a checkpoint for another box size)
is reported as one line on stderr with exit code 2, never a traceback.

The package: `parser` (the argument parser), `commands` (one function per
subcommand), `training` (what pretrain and finetune share: overwrite refusal, CPU
schedules, Ctrl-C), `outputs` (the files the commands write); here, `main`.
"""

from __future__ import annotations

import sys

from napari_cryossl.cli.commands import _COMMANDS
from napari_cryossl.cli.parser import build_parser
from napari_cryossl.cli.training import _Interrupted

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    """Run `cryossl` with `argv` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from napari_cryossl.io import InputError

    try:
        return int(_COMMANDS[args.command](args) or 0)
    except InputError as err:
        print(f"cryossl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        detail = f" ({exc})" if isinstance(exc, _Interrupted) else ""
        print(f"cryossl {args.command}: interrupted{detail}", file=sys.stderr)
        return 130
