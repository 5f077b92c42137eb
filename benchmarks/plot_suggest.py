"""Accuracy against labels, suggestions against random clicks: one panel per result.

Reads the ``suggest.json`` that ``bench_suggest.py`` writes and draws, for each, the
instant classifier's accuracy on the particles not yet labelled against the number of
labels, one line per strategy, with random labelling's accuracy at its last budget as a
dotted line (the level the issue's target asks suggestions to reach with half the labels).

    python benchmarks/plot_suggest.py RESULT_DIR [RESULT_DIR ...] --out docs/img/suggest.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STYLE = {"random": ("0.45", "--"), "auto": ("#1f77b4", "-"), "margin": ("#d62728", "-"),
         "typical": ("#2ca02c", "-")}


def plot(results: list[tuple[str, dict]], out: Path, columns: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(results) + columns - 1) // columns
    cols = min(columns, len(results))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False,
                             sharex=True)
    for ax, (title, result) in zip(axes.flat, results, strict=False):
        n = result["n_labels"]
        for strategy, (colour, line) in STYLE.items():
            if strategy in result:
                ax.plot(n, [100 * a for a in result[strategy]], line, color=colour,
                        label=strategy, lw=1.6)
        target = 100 * result["random"][-1]
        ax.axhline(target, color="0.45", lw=0.8, ls=":")
        ax.axvline(n[-1] / 2, color="0.45", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("labels")
        ax.set_ylabel("accuracy on the unlabelled (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _title(folder: Path, result: dict) -> str:
    counts = result.get("counts")
    kind = "balanced" if not counts or len(set(counts)) == 1 else "/".join(map(str, counts))
    return f"{folder.name}: {kind}, SNR {result.get('snr')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="folders holding suggest.json")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/suggest.png"))
    p.add_argument("--columns", type=int, default=3)
    args = p.parse_args(argv)
    loaded = []
    for folder in args.results:
        path = folder / "suggest.json"
        if not path.is_file():
            p.error(f"{path}: not found (run bench_suggest.py --out {folder} first)")
        result = json.loads(path.read_text())
        loaded.append((_title(folder, result), result))
    print(plot(loaded, args.out, args.columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
