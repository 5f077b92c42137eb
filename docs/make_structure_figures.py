"""Pictures and table of the built-in complexes for docs/simulator.md.

    python docs/make_structure_figures.py   # writes docs/img/structures_*.png, prints a table

Everything comes from the public API: `napari_cryossl.simulate.structures` for the densities and
`napari_cryossl.simulate` with ``structures="builtin"`` for the simulated data.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_cryossl.simulate import (  # noqa: E402
    SimulationConfig,
    class_templates,
    simulate_subtomogram_details,
    simulate_tomogram,
)
from napari_cryossl.simulate.structures import builtin_structures, load_structure  # noqa: E402

HERE = Path(__file__).resolve().parent


def _show(ax, image, title=None, lo_hi=None) -> None:
    lo, hi = lo_hi if lo_hi is not None else np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def table(voxel_size: float = 10.0) -> str:
    """Mass, size and radius of gyration of every built-in complex (density at 10 Å)."""
    rows = [
        "| # | name | PDB | what it is | mass (kDa) | 99 %-mass diameter (Å) | Rg (Å) | source archive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(builtin_structures(), start=1):
        item = load_structure(e.name, voxel_size)
        d = item.density.astype(np.float64)
        c = np.array(d.shape) // 2
        g = np.indices(d.shape) - c[:, None, None, None]
        rg = np.sqrt(((g**2).sum(0) * d).sum() / d.sum()) * voxel_size
        rows.append(
            f"| {i} | {e.name} | {e.pdb_id} | {e.description} | {item.mass_kda:.0f} | "
            f"{2 * item.radius_a(0.99):.0f} | {rg:.0f} | {e.origin} |"
        )
    return "\n".join(rows)


def templates_figure(out: Path) -> None:
    """Central slices of every complex at 10 Å, and one simulated subtomogram of each."""
    config = SimulationConfig(structures="builtin", n_classes=10)
    templates = class_templates(config)
    entries = builtin_structures()
    clean = dataclasses.replace(config, snr=None)
    sims = {
        "noise-free": simulate_subtomogram_details(3, clean, seed=2),
        "SNR 0.05": simulate_subtomogram_details(3, config, seed=2),
    }
    first = [int(np.flatnonzero(sims["noise-free"].class_numbers == k)[0]) for k in range(1, 11)]
    fig, axes = plt.subplots(5, 10, figsize=(15, 7.8))
    top = float(templates.max())
    b = config.box_size // 2
    for i, (t, e) in enumerate(zip(templates, entries, strict=True)):
        item = load_structure(e.name, 10.0)
        title = f"{e.name}\n{e.pdb_id}, {item.mass_kda:.0f} kDa"
        _show(axes[0, i], t[b], title, (0, top))
        _show(axes[1, i], t[:, b], None, (0, top))
        _show(axes[2, i], t[:, :, b], None, (0, top))
        for row, key in ((3, "noise-free"), (4, "SNR 0.05")):
            v = sims[key].volumes[first[i]]
            _show(axes[row, i], v[b])
    labels = (
        "XY slice",
        "XZ slice",
        "YZ slice",
        "simulated,\nnoise-free (XY)",
        "simulated,\nSNR 0.05 (XY)",
    )
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(
        "Built-in complexes: central slices of the density at 10 Å (32³ box, protein bright, one "
        "grey scale for all), and one simulated subtomogram each (crowded, shifted, wedge, CTF; "
        "protein dark)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def tomogram_figure(out: Path) -> None:
    """A (64, 256, 256) tomogram of the ten complexes, noise-free and at SNR 0.05."""
    shape = (64, 256, 256)
    config = SimulationConfig(structures="builtin", n_classes=10)
    clean, truth = simulate_tomogram(shape, 100, dataclasses.replace(config, snr=None), seed=0)
    noisy, _ = simulate_tomogram(shape, 100, config, seed=0)
    radii = {
        k + 1: load_structure(e.name, 10.0).radius_a(0.95) / 10.0
        for k, e in enumerate(builtin_structures())
    }
    z = shape[0] // 2
    near = truth[(truth["z"] - z).abs() < truth["class_number"].map(radii)]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 2, figsize=(11.5, 7.8), gridspec_kw={"height_ratios": [256, 64]})
    for col, (vol, label) in enumerate(((clean, "noise-free"), (noisy, "SNR 0.05"))):
        _show(axes[0, col], vol[z - 1 : z + 2].mean(0), f"{label}: XY, z = {z} (3-slice average)")
        for _, row in near.iterrows():
            c = int(row["class_number"])
            axes[0, col].add_patch(
                plt.Circle((row["x"], row["y"]), radii[c], fill=False, color=colours(c - 1), lw=1)
            )
        _show(axes[1, col], vol[:, shape[1] // 2], f"{label}: XZ slice y = {shape[1] // 2}")
    handles = [
        plt.Line2D([], [], color=colours(k), marker="o", ls="", mfc="none", label=e.name)
        for k, e in enumerate(builtin_structures())
    ]
    fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    templates_figure(args.out / "structures_templates.png")
    tomogram_figure(args.out / "structures_tomogram.png")
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
