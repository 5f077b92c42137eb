"""README's command list runs as written on the folder `cryossl demo` writes, and running
it a second time replaces nothing."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from napari_cryossl.cli import main
from napari_cryossl.cli.demo import run_demo

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- demo-folder-commands -->"
# Only to keep CI short: the training commands train for one epoch on a tiny batch.
SHORT_TRAINING = ["--epochs", "1", "--batch-size", "4", "--device", "cpu"]


def demo_folder_commands() -> list[list[str]]:
    """The `cryossl ...` lines of README's block after MARK, as argument lists."""
    block = README.read_text().split(MARK, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("cryossl ")]


def _outputs(args: list[str]) -> list[Path]:
    out = Path(args[args.index("--out") + 1])
    return [out, out.with_suffix(".npy")] if args[0] == "embed" else [out]


@pytest.mark.slow
def test_readme_commands_run_as_written_on_the_demo_folder(tmp_path, monkeypatch, capsys):
    commands = demo_folder_commands()
    assert {c[0] for c in commands} >= {
        "pick", "pretrain", "finetune", "predict", "gradcam", "embed", "suggest"
    }
    folder = tmp_path / "demo"
    run_demo(
        folder,
        preset="cpu",
        device="cpu",
        verbose=False,
        preset_overrides=dict(
            tomogram_shape=(32, 96, 96), n_particles=16, n_classes=2, pretrain_epochs=1,
            finetune_epochs=1, finetune_min_steps=0, labels_per_class=2, batch_size=4,
        ),
    )
    monkeypatch.chdir(folder)
    for args in commands:
        extra = SHORT_TRAINING if args[0] in ("pretrain", "finetune") else []
        code = main(args + extra)
        err = capsys.readouterr().err
        assert code == 0, f"cryossl {shlex.join(args)} failed: {err}"
        for path in _outputs(args):
            assert path.exists() and (path.is_file() or any(path.iterdir())), path

    # a second run of every command refuses, names the file, and leaves it as it was
    for args in commands:
        before = {p: _content(p) for p in _outputs(args)}
        assert main(args + (SHORT_TRAINING if args[0] in ("pretrain", "finetune") else [])) == 2
        err = capsys.readouterr().err
        assert "--overwrite" in err and str(_outputs(args)[0]) in err
        assert {p: _content(p) for p in _outputs(args)} == before


def _content(path: Path) -> bytes | dict:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()
