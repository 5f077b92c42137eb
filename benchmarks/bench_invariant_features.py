"""Do rotation- and translation-invariant descriptions beat the network with few labels?

The radial floor is rotation-invariant only about the box centre, and centring finds that
centre to about 1.2 voxels per axis (``bench_centring.py``). Solid-harmonic wavelet
scattering (Eickenberg et al., NeurIPS 2017: the modulus of a box's convolutions with
Gaussian x solid-harmonic wavelets, summed over the harmonic's order m, then integrated over
the box) is invariant to rotations *and* translations by construction, so it needs no
centre. This benchmark asks whether a logistic regression on it, or its product with the
network, classifies the built-in complexes better than the network does with 9 labels per
class, and whether binning the boxes by 2 (8x fewer voxels; about 6x more steps in the
same time on the CPU) does.

Data and draws: the "quick" set of ``reproduce_paper.py`` (the ten built-in complexes x 60,
crowded, CTF, ±60° wedge, 32³ at 10 Å, SNR 0.1 or ``--snr``), the labels drawn as
``bench_few_labels`` draws them (5 seeds), the same 120 test particles. Rows:

- ``floor``: ``baselines.FloorClassifier`` (radial features + logistic regression);
- ``scattering J L sigma R``: logistic regression (``probe.fit_logistic``, l2 0.1) on the
  log of the scattering invariants (integral powers 1 and 2, orders 1 and 2) of the box
  under a soft spherical mask of radius R voxels; ``+centring`` on boxes first moved by
  ``nn.centring.centre_offsets``;
- ``--network``: the default fine-tuning recipe (400 steps, batch 16) on the 480
  fine-tuning particles, and the product of its probabilities with each scattering row's;
- ``--binned STEPS ...``: the default recipe on the same boxes binned by 2 (16³ at 20 Å).

Hand-written: kymatio's ``HarmonicScattering3D`` (0.3.0) imports ``scipy.special.sph_harm``,
which SciPy 1.17 removed; the transform itself is a few FFTs per wavelet::

    OMP_NUM_THREADS=1 python benchmarks/bench_invariant_features.py --network --binned 400 3000 \\
        --out benchmarks/results/invariant_features_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_few_labels import (  # noqa: E402
    drawn_labels,
    fine_tuning_set,
    label_fraction,
    quick_set,
    set_arguments,
)

#: (J, L, sigma_0, mask radius): scales 2**0..J of sigma_0 voxels, harmonic degrees 0..L.
SETTINGS = ((4, 4, 1.0, 14), (3, 4, 2.0, 14), (3, 6, 2.0, 12), (3, 6, 2.0, 10), (2, 8, 2.0, 14))
POWERS = (1.0, 2.0)


def wavelets(box: int, J: int, L: int, sigma0: float) -> dict:
    """Fourier transforms of the solid-harmonic wavelets, orders m = 0..l, per (j, l).

    The Fourier transform of a Gaussian times a solid harmonic is again one (Hecke), so the
    filters are built in Fourier space directly; each (j, l) family has unit energy. For a
    real input the responses to m and -m have equal modulus, hence the weights 1, 2, 2, ...
    """
    import torch

    try:
        from scipy.special import sph_harm_y
    except ImportError:  # SciPy < 1.15: the older name and argument order
        from scipy.special import sph_harm

        def sph_harm_y(n, m, polar, azimuth):
            return sph_harm(m, n, azimuth, polar)

    k = np.fft.fftfreq(box) * 2 * np.pi
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    kr = np.sqrt(kz**2 + ky**2 + kx**2)
    polar = np.arccos(np.clip(kz / np.maximum(kr, 1e-12), -1, 1))
    azimuth = np.arctan2(ky, kx)
    out = {}
    for j in range(J + 1):
        s = sigma0 * 2**j
        radial = np.exp(-((s * kr) ** 2) / 2)
        for degree in range(L + 1):
            fs = np.stack([(s * kr) ** degree * radial * sph_harm_y(degree, m, polar, azimuth)
                           for m in range(degree + 1)])
            weight = np.array([1.0] + [2.0] * degree)
            fs /= np.sqrt((weight[:, None] * np.abs(fs.reshape(degree + 1, -1)) ** 2).sum())
            out[j, degree] = (torch.from_numpy(fs).to(torch.complex64),
                              torch.tensor(weight, dtype=torch.float32))
    return out


def _modulus(spectrum, family):
    import torch

    fs, weight = family
    y = torch.fft.ifftn(spectrum[:, None] * fs[None], dim=(-3, -2, -1))
    return torch.sqrt((weight[None, :, None, None, None] * y.abs() ** 2).sum(1))


def scattering(boxes: np.ndarray, J: int, L: int, sigma0: float, mask_radius: float,
               chunk: int = 50) -> np.ndarray:
    """(N, B, B, B) boxes -> (N, F) log scattering invariants (orders 0, 1, 2)."""
    import torch

    b = boxes.shape[-1]
    g = np.arange(b) - b // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    mask = (1 / (1 + np.exp((r - mask_radius) / 1.5))).astype(np.float32)
    bank = wavelets(b, J, L, sigma0)

    def integrals(u):
        return torch.stack([(u**q).sum((-3, -2, -1)) for q in POWERS], -1)

    out = []
    for start in range(0, len(boxes), chunk):
        x = torch.from_numpy(_standardised(boxes[start:start + chunk]) * mask)
        spectrum = torch.fft.fftn(x.to(torch.complex64), dim=(-3, -2, -1))
        feats = [integrals(x.abs())]
        for degree in range(L + 1):
            first = [_modulus(spectrum, bank[j, degree]) for j in range(J + 1)]
            feats += [integrals(u) for u in first]
            for j1, u in enumerate(first):
                u_spectrum = torch.fft.fftn(u.to(torch.complex64), dim=(-3, -2, -1))
                feats += [integrals(_modulus(u_spectrum, bank[j2, degree]))
                          for j2 in range(j1 + 1, J + 1)]
        out.append(torch.cat(feats, -1).numpy())
    return np.log(np.abs(np.concatenate(out)) + 1e-6)


def _standardised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean((1, 2, 3), keepdims=True)) / (x.std((1, 2, 3), keepdims=True) + 1e-8)


def _mean_sd(values) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} %" if len(v) > 1 else f"{v.mean():.1f} %"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    set_arguments(parser)
    parser.add_argument("--labels", type=int, default=9, help="labels per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="*", type=json.loads,
                        default=[list(s) for s in SETTINGS], help="[J, L, sigma_0, mask radius]")
    parser.add_argument("--network", action="store_true", help="also the default network")
    parser.add_argument("--binned", nargs="*", type=int, default=[],
                        help="also the default network on boxes binned by 2, for these steps")
    parser.add_argument("--steps", type=int, default=400, help="steps of the --network rows")
    args = parser.parse_args(argv)

    import torch
    from scipy.stats import ttest_rel

    from napari_cryossl.analysis.baselines import FloorClassifier
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.nn.centring import centre_offsets, shift_boxes
    from napari_cryossl.nn.probe import fit_logistic
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.train import FinetuneConfig, iter_finetune

    torch.set_num_threads(1)
    _, all_data, train_idx, val_idx, test_idx = quick_set(args.per_class, args.snr)
    labels = np.asarray(all_data.class_numbers)
    truth = labels[test_idx]
    data, pool = fine_tuning_set(all_data, train_idx, val_idx)
    shown = np.asarray(data.class_numbers)
    fraction = label_fraction(labels, train_idx, args.labels)
    draws = {s: drawn_labels(shown, fraction, s) for s in args.seeds}
    boxes = all_data.load(np.arange(len(labels))).astype(np.float32)
    centred = shift_boxes(boxes, -centre_offsets(boxes)).astype(np.float32)
    rows, proba = [], {}

    def row(name, accs, seconds, **extra):
        rows.append({"method": name, "test_accuracy": [float(a) for a in accs],
                     "mean": float(np.mean(accs)), "seconds": seconds, **extra})
        print(f"{name}: {_mean_sd(accs)} ({seconds:.0f} s)", flush=True)

    t0 = time.perf_counter()
    accs = []
    for chosen in draws.values():
        clf = FloorClassifier().fit(boxes[pool[chosen]], shown[chosen])
        accs.append((clf.predict(boxes[test_idx]) == truth).mean())
    row("floor", accs, time.perf_counter() - t0)

    for J, L, sigma0, radius in args.settings:
        for name, source in (("", boxes), ("+centring", centred)):
            t0 = time.perf_counter()
            feats = scattering(source, J, L, sigma0, radius)
            accs, key = [], f"scattering J{J} L{L} sigma{sigma0:g} R{radius}{name}"
            for s, chosen in draws.items():
                classes = np.unique(shown[chosen])
                w, b = fit_logistic(feats[pool[chosen]], np.searchsorted(classes, shown[chosen]),
                                    len(classes), l2=0.1)
                logits = feats[test_idx] @ w.T + b
                logits -= logits.max(1, keepdims=True)
                proba[key, s] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
                accs.append((classes[logits.argmax(1)] == truth).mean())
            row(key, accs, time.perf_counter() - t0, features=int(feats.shape[1]))

    def network(train_set, test_set, steps, name):
        accs = []
        t0 = time.perf_counter()
        for s in args.seeds:
            path = Path(scratch) / f"classifier_{s}.pt"
            config = FinetuneConfig(epochs=5, min_steps=steps, batch_size=16, device="cpu",
                                    label_fraction=fraction, val_fraction=0.0,
                                    seed=s)
            for _ in iter_finetune(train_set, config, path):
                pass
            pred = predict(path, test_set, device="cpu")
            path.unlink(missing_ok=True)
            proba[name, s] = pred.probabilities
            accs.append((pred.class_numbers == truth).mean())
        row(name, accs, time.perf_counter() - t0, steps=steps)
        return pred.classes

    scratch = tempfile.mkdtemp(prefix="bench_invariant_")
    if args.network:
        classes = network(data, all_data.subset(test_idx), args.steps, "network")
        rows_by_name = {r["method"]: r for r in rows}
        for key in [r["method"] for r in rows if r["method"].startswith("scattering")]:
            accs = [(classes[(np.log(proba["network", s] + 1e-9)
                              + np.log(proba[key, s] + 1e-9)).argmax(1)] == truth).mean()
                    for s in args.seeds]
            diff = np.asarray(accs) - np.asarray(rows_by_name["network"]["test_accuracy"])
            paired = (float(ttest_rel(accs, rows_by_name["network"]["test_accuracy"]).pvalue)
                      if len(accs) > 1 and diff.std() > 0 else None)
            row(f"network x {key}", accs, 0.0, minus_network=float(diff.mean()), paired_p=paired)
    if args.binned:
        b = boxes.shape[1] // 2
        binned = boxes[:, :2 * b, :2 * b, :2 * b].reshape(len(boxes), b, 2, b, 2, b, 2).mean((2, 4, 6))
        binned_set = SubtomogramSet.from_arrays(binned, labels, voxel_size=2 * all_data.voxel_size)
        binned_data, _ = fine_tuning_set(binned_set, train_idx, val_idx)
        for steps in args.binned:
            network(binned_data, binned_set.subset(test_idx), steps, f"network, binned by 2, {steps} steps")

    shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "benchmark": "rotation- and translation-invariant features against the network, "
                     f"{args.labels} labels per class, 10 built-in complexes, 32³ at 10 Å, "
                     f"SNR {args.snr:g}, {args.per_class} per class (bench_few_labels' draws)",
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "settings": args.settings,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n| row | test accuracy | − network (paired p) |\n|---|---|---|")
    for r in rows:
        vs = (f"{100 * r['minus_network']:+.1f} ({r['paired_p']:.2f})"
              if r.get("paired_p") is not None else "")
        print(f"| {r['method']} | {_mean_sd(r['test_accuracy'])} | {vs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
