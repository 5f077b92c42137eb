"""Make the pictures of docs/simulator.md (docs/img/simulator_*.png) and print its numbers.

    python docs/make_simulator_figures.py            # writes docs/img/, prints tables

Every picture comes from the public functions of `napari_cryossl.simulate` with the
default settings (10 classes, 32³, 10 Å voxels, ±60°, 5 µm underfocus, 300 kV),
so the pictures show exactly what the simulator produces.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_cryossl.simulate import (  # noqa: E402
    SimulationConfig,
    class_names,
    class_templates,
    clutter_mask,
    contrast_transfer,
    missing_wedge_mask,
    simulate_subtomogram_details,
    simulate_tomogram,
    simulate_tomogram_details,
)

HERE = Path(__file__).resolve().parent


def _show(ax, image: np.ndarray, title: str | None = None, lo_hi=None) -> None:
    """Grey image with 1-99 % contrast (or given limits), no ticks."""
    lo, hi = lo_hi if lo_hi is not None else np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def templates_figure(out: Path) -> None:
    """All named classes: projections of the ground-truth density along Z, Y and X."""
    config = SimulationConfig(n_classes=16)
    templates = class_templates(config)
    names = class_names(16)
    fig, axes = plt.subplots(3, 16, figsize=(16, 3.4))
    for i, t in enumerate(templates):
        for row, axis in enumerate((0, 1, 2)):
            _show(axes[row, i], t.sum(axis=axis), names[i] if row == 0 else None)
    for row, label in enumerate(("along Z (XY)", "along Y (XZ)", "along X (YZ)")):
        axes[row, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(
        "Class templates (ground-truth density, protein bright; same mass and radius of gyration)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def subtomograms_figure(out: Path, seed: int = 4) -> None:
    """One subtomogram per class, the same particle at every stage, central XY and XZ slices."""
    base = SimulationConfig()
    stages = [
        ("density", dataclasses.replace(base, snr=None, apply_ctf=False, tilt_range_deg=90.0)),
        ("wedge + CTF", dataclasses.replace(base, snr=None)),
        ("SNR 0.05", dataclasses.replace(base, snr=0.05)),
        ("SNR 0.03", dataclasses.replace(base, snr=0.03)),
    ]
    runs = [simulate_subtomogram_details(1, cfg, seed=seed) for _, cfg in stages]
    order = np.argsort(runs[0].class_numbers)
    names = class_names(base.n_classes)
    b = base.box_size
    fig, axes = plt.subplots(2 * len(stages), base.n_classes, figsize=(13, 11.5))
    for col, j in enumerate(order):
        for s, run in enumerate(runs):
            vol = run.volumes[j]
            lo_hi = np.percentile(vol, [1, 99])
            _show(axes[2 * s, col], vol[b // 2], names[col] if s == 0 else None, lo_hi)
            _show(axes[2 * s + 1, col], vol[:, b // 2], None, lo_hi)
        for s, (label, _) in enumerate(stages):
            axes[2 * s, 0].set_ylabel(f"{label}\nXY (z = {b // 2})", fontsize=8)
            axes[2 * s + 1, 0].set_ylabel(f"{label}\nXZ (y = {b // 2})", fontsize=8)
    fig.suptitle(
        "Simulated 32³ subtomograms (10 Å voxels), one per class, protein dark: the same "
        "particle\n(random rotation, shift, crowding neighbours) as density, after "
        "missing wedge (±60°, tilt axis Y) + CTF (5 µm), and with noise",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def optics_figure(out: Path) -> None:
    """The CTF against spatial frequency, and the missing wedge in the (kx, kz) plane."""
    config = SimulationConfig()
    nyquist = 1 / (2 * config.voxel_size)
    k = np.linspace(0, nyquist, 400)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    ax = axes[0]
    for df in (3.0, 5.0):
        ax.plot(k, contrast_transfer(k, config, defocus_um=df), label=f"{df:g} µm underfocus")
    flipped = dataclasses.replace(config, phase_flip=True)
    ax.plot(k, contrast_transfer(k, flipped), "k:", label="5 µm, phase-flipped")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("spatial frequency (1/Å); Nyquist at 10 Å voxels = 1/20 Å")
    ax.set_ylabel("CTF")
    ax.legend(fontsize=7)
    ax.set_title("CTF, 300 kV, Cs 2.7 mm, 7 % amplitude contrast", fontsize=9)

    mask = missing_wedge_mask((64, 64, 64), config.tilt_range_deg)
    full = np.concatenate([mask[:, 0, :0:-1], mask[:, 0, :]], axis=1)  # kx from -31 to 32
    axes[1].imshow(
        np.fft.fftshift(full, axes=0), cmap="gray", origin="lower", extent=(-32, 32, -32, 32)
    )
    axes[1].set_xlabel("kx")
    axes[1].set_ylabel("kz (beam)")
    axes[1].set_title("measured Fourier region (white), ky = 0: ±60° about Y", fontsize=9)

    # radial power of the noise-free signal vs the noise at SNR 0.05
    run_clean = simulate_subtomogram_details(20, dataclasses.replace(config, snr=None), seed=1)
    run_noisy = simulate_subtomogram_details(20, config, seed=1)
    noise = run_noisy.volumes - run_clean.volumes
    b = config.box_size
    f = np.fft.fftfreq(b)
    shells = np.round(
        np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2) * b
    ).astype(int)
    for data, label in ((run_clean.volumes, "signal"), (noise, "noise (SNR 0.05)")):
        power = (np.abs(np.fft.fftn(data, axes=(1, 2, 3))) ** 2).mean(axis=0)
        profile = np.bincount(shells.ravel(), power.ravel()) / np.bincount(shells.ravel())
        axes[2].semilogy(
            np.arange(b // 2) / (b * config.voxel_size), profile[: b // 2], label=label
        )
    axes[2].set_xlabel("spatial frequency (1/Å)")
    axes[2].set_ylabel("power (shell average)")
    axes[2].legend(fontsize=7)
    axes[2].set_title("power spectra of 200 subtomograms", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def tomogram_figure(out: Path) -> None:
    """The demo-sized crowded tomogram, noise-free and at SNR 0.05, with ground truth."""
    shape = (64, 256, 256)
    config = SimulationConfig(n_classes=10)
    clean, table = simulate_tomogram(shape, 160, dataclasses.replace(config, snr=None), seed=0)
    noisy, _ = simulate_tomogram(shape, 160, config, seed=0)
    z = shape[0] // 2
    near = table[(table["z"] - z).abs() < config.particle_diameter_px / 2]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6), gridspec_kw={"height_ratios": [256, 64]})
    for col, (vol, label) in enumerate(((clean, "noise-free"), (noisy, "SNR 0.05"))):
        _show(axes[0, col], vol[z], f"{label}: XY slice z = {z}, circles = ground truth")
        axes[0, col].scatter(
            near["x"],
            near["y"],
            s=160,
            facecolors="none",
            edgecolors=[colours((c - 1) % 10) for c in near["class_number"]],
            linewidths=1,
        )
        _show(axes[1, col], vol[:, shape[1] // 2], f"{label}: XZ slice y = {shape[1] // 2}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


#: Clutter amounts of the clutter picture (per µm²; the defaults are lower): every kind
#: at least once in a (64, 256, 256) tomogram at 10 Å (0.066 µm² of field of view).
CLUTTER_FIGURE_AMOUNTS = dict(
    gold_per_um2=120.0,
    vesicles_per_um2=30.0,
    membranes_per_um2=15.0,
    ice_per_um2=15.0,
    actin_per_um2=60.0,
    microtubules_per_um2=15.0,
    carbon_edge=True,
)
CLUTTER_COLOURS = {
    "gold": "gold",
    "vesicle": "tab:green",
    "membrane": "tab:olive",
    "ice": "tab:cyan",
    "actin": "tab:red",
    "microtubule": "tab:purple",
    "carbon": "tab:orange",
}


def clutter_figure(out: Path, seed: int = 2) -> None:
    """A cluttered tomogram: the density, the noise-free image and SNR 0.05, XY and XZ
    slices, each clutter object outlined (its matter, `clutter_mask`) and labelled."""
    shape = (64, 256, 256)
    config = SimulationConfig(n_classes=10, **CLUTTER_FIGURE_AMOUNTS)
    clean = simulate_tomogram_details(
        shape, 100, dataclasses.replace(config, snr=None), seed=seed, keep_density=True
    )
    noisy = simulate_tomogram(shape, 100, config, seed=seed)[0]
    clutter = clean.clutter.reset_index(drop=True)
    z, y = 24, shape[1] // 2
    masks = [clutter_mask(shape, clutter.iloc[[j]]) for j in range(len(clutter))]
    panels = ((-clean.density, "density (before the optics)"), (clean.volume, "noise-free"))
    panels += ((noisy, "SNR 0.05"),)
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.9), gridspec_kw={"height_ratios": [256, 64]})
    near = clean.particles[(clean.particles["z"] - z).abs() < config.particle_diameter_px / 2]
    for col, (vol, label) in enumerate(panels):
        limits = (-1.5, 0.2) if col == 0 else None  # density: protein (1) dark
        _show(axes[0, col], vol[z], f"{label}: XY slice z = {z}", limits)
        _show(axes[1, col], vol[:, y], f"{label}: XZ slice y = {y}", limits)
        axes[0, col].scatter(
            near["x"], near["y"], s=90, facecolors="none", edgecolors="w", linewidths=0.6
        )
        for row, cut in ((0, lambda m: m[z]), (1, lambda m: m[:, y])):
            ax = axes[row, col]
            for j, mask in enumerate(masks):
                part = cut(mask)
                if not part.any():
                    continue
                colour = CLUTTER_COLOURS[clutter.loc[j, "kind"]]
                if col == 0:  # outlines on the density, labels beside the object everywhere
                    ax.contour(part, levels=[0.5], colors=[colour], linewidths=0.6)
                rows, cols = np.nonzero(part)
                i = len(rows) // 2
                ax.text(
                    cols[i] + 4, rows[i] - 4, clutter.loc[j, "kind"], color=colour, fontsize=7,
                    ha="left", va="bottom", fontweight="bold",
                )  # fmt: skip
    fig.suptitle(
        "Clutter in a simulated tomogram (64 × 256 × 256 at 10 Å, 100 particles in white "
        f"circles; {', '.join(f'{k} {n}' for k, n in clutter['kind'].value_counts().items())})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def honesty_table(n_per_class: int = 40) -> str:
    """Per-class mean total intensity and Rg (noise-free density), and a shortcut test.

    The shortcut test classifies SNR 0.05 subtomograms by their nearest class centroid
    in a space of global statistics (sum, variance, min, max, kurtosis); it should be
    near chance.
    """
    plain = SimulationConfig(snr=None, apply_ctf=False, tilt_range_deg=90.0, n_neighbors=0)
    run = simulate_subtomogram_details(n_per_class, plain, seed=0)
    grid = np.indices(run.volumes.shape[1:]).reshape(3, -1).T.astype(float)
    rows = [
        "| class | name | total intensity | radius of gyration (voxels) | 95 %-mass diameter (voxels) |",
        "|---|---|---|---|---|",
    ]
    names = class_names(plain.n_classes)
    for c in range(1, plain.n_classes + 1):
        vols = -run.volumes[run.class_numbers == c]
        mass = vols.sum(axis=(1, 2, 3))
        rgs, d95 = [], []
        for v in vols:
            w = v.ravel()
            com = grid.T @ w / w.sum()
            r2 = ((grid - com) ** 2).sum(axis=1)
            rgs.append(math.sqrt((r2 * w).sum() / w.sum()))
            order = np.argsort(r2)
            inside = np.searchsorted(np.cumsum(w[order]) / w.sum(), 0.95)
            d95.append(2 * math.sqrt(r2[order][inside]))
        rows.append(
            f"| {c} | {names[c - 1]} | {mass.mean():.1f} | {np.mean(rgs):.3f} | "
            f"{np.mean(d95):.1f} |"
        )

    noisy = simulate_subtomogram_details(n_per_class, SimulationConfig(), seed=0)
    v = noisy.volumes.reshape(len(noisy.volumes), -1)
    mean = v.mean(axis=1, keepdims=True)
    std = v.std(axis=1, keepdims=True)
    feats = np.stack(
        [v.sum(1), v.var(1), v.min(1), v.max(1), (((v - mean) / std) ** 4).mean(1)], axis=1
    )
    feats = (feats - feats.mean(0)) / feats.std(0)
    labels = noisy.class_numbers
    half = len(labels) // 2
    centroids = np.stack([feats[:half][labels[:half] == c].mean(0) for c in range(1, 11)])
    pred = np.argmin(((feats[half:, None] - centroids[None]) ** 2).sum(-1), axis=1) + 1
    accuracy = float((pred == labels[half:]).mean())
    return "\n".join(rows) + (
        f"\n\nNearest-centroid accuracy on global statistics (sum, variance, min, max, "
        f"kurtosis) of SNR 0.05 subtomograms, {half} train / {len(labels) - half} test: "
        f"{accuracy:.1%} (chance 10%)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "img")
    parser.add_argument("--only", choices=("clutter",), help="make only this picture")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only == "clutter":
        clutter_figure(args.out / "simulator_clutter.png")
        return 0
    templates_figure(args.out / "simulator_templates.png")
    subtomograms_figure(args.out / "simulator_subtomograms.png")
    optics_figure(args.out / "simulator_optics.png")
    tomogram_figure(args.out / "simulator_tomogram.png")
    clutter_figure(args.out / "simulator_clutter.png")
    print(honesty_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
