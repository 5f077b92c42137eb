"""The few-label curve: test accuracy against labels per class, one panel per result file.

Reads the JSON that ``bench_few_labels.py --summarise`` writes and draws every method's mean
(error bars: the standard deviation over seeds, dots: single runs) beside the floor (radial
features + logistic regression on the same labels) and the ceiling (template matching with
the true templates) of the same test particles, so that a curve can be read against what
the data allow.

    python benchmarks/plot_few_labels.py benchmarks/results/few_labels_A.json [B.json ...] \\
        --out docs/img/few_labels.png
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

STYLE = {"floor": ("0.45", "--", "s"), "random": ("#1f77b4", "-", "o"),
         "moco": ("#d62728", "-", "^"), "random+semi": ("#2ca02c", "-", "v"),
         "moco+semi": ("#9467bd", "-", "D")}
OTHER = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _x(k, n_all: int) -> int:
    return n_all if k is None else int(k)


def plot(results: list[tuple[str, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.8), squeeze=False)
    for ax, (title, result) in zip(axes[0], results, strict=True):
        rows = [r for r in result["rows"] if r.get("method") != "ceiling"]
        # "all": the training split's labels per class (the runs' labels / their classes)
        classes = next((r["n_labels"] // r["k"] for r in rows if r.get("k")), 1)
        n_all = max((r["n_labels"] // classes for r in rows if r.get("k") is None), default=0)
        extra = iter(OTHER)
        for method in dict.fromkeys(t["method"] for t in result["table"]):
            color, line, marker = STYLE.get(method) or (next(extra, "k"), "-", "o")
            table = sorted((t for t in result["table"] if t["method"] == method),
                           key=lambda t: _x(t["k"], n_all))
            xs = [_x(t["k"], n_all) for t in table]
            ys = [100 * t["mean"] for t in table]
            sd = [100 * (t["sd"] or 0) for t in table]
            ax.errorbar(xs, ys, yerr=sd, color=color, ls=line, marker=marker, ms=4,
                        capsize=3, label=method)
            for t in table:
                ax.scatter([_x(t["k"], n_all)] * len(t["values"]),
                           [100 * v for v in t["values"]], s=6, color=color, alpha=0.35)
        if result.get("ceiling") is not None:
            ax.axhline(100 * result["ceiling"], color="k", ls=":", lw=1,
                       label="ceiling (true templates)")
        ax.axhline(10, color="0.7", lw=0.8)
        ax.set_xscale("log")
        ticks = sorted({_x(r["k"], n_all) for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labels per class (rightmost: all of the training split)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench_few_labels.py JSON files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        result = json.loads(path.read_text())
        title = result.get("benchmark", path.stem).split(" (")[0].replace(" Å", "\u00a0Å")
        results.append((textwrap.fill(title, 55), result))
    print(plot(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
