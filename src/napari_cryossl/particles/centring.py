"""Centring boxed particles on spherically averaged references, without labels.

A pick is rarely on its particle's centre (a click, a DoG peak on a lobe, a table from
another binning), and everything rotation-invariant about a box (radial profiles, the
network's distance-from-centre channel) is invariant only about the particle's centre.
On the built-in complexes (32³ at 10 Å, SNR 0.1) particles up to 3 voxels off-centre
per axis cost the radial-feature classifier about 20 points (docs/benchmarks.md).

The method: smooth each box, cluster the boxes' radial profiles into k groups, build each
group's spherically symmetric average, and move every box to the shift (within
``max_shift`` voxels) with the best cross-correlation against any of the k references;
then rebuild the references from the moved boxes and repeat. A spherical reference needs
no orientation search, so each round is k FFT cross-correlations per box; several
references are needed because one average of complexes of different sizes pulls small
particles towards their densest part and large ones towards a neighbour.

Hand-written: RELION, Dynamo and EMAN centre on a reference in their own alignment
loops, but no Python library centres a batch of subtomograms against spherical
references.
"""

from __future__ import annotations

import numpy as np

__all__ = ["centre_offsets", "shift_boxes"]


def _radius_index(box: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    return r, np.round(r).astype(np.int64)


def _prepared(boxes: np.ndarray, sigma: float, polarity: str) -> np.ndarray:
    """Low-passed, standardised boxes with protein positive."""
    from scipy import ndimage

    out = np.empty(boxes.shape, dtype=np.float32)
    for i, box in enumerate(boxes):
        out[i] = ndimage.gaussian_filter(np.asarray(box, dtype=np.float32), sigma)
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    out /= out.std(axis=(1, 2, 3), keepdims=True) + 1e-8
    return -out if polarity == "dark" else out


def shift_boxes(boxes: np.ndarray, shifts_zyx: np.ndarray) -> np.ndarray:
    """Move the content of each (B, B, B) box by its (z, y, x) shift in voxels.

    A phase ramp in Fourier space: exact for band-limited boxes, and periodic, so what
    leaves one face comes back at the opposite one (a few voxels of background for the
    shifts ``centre_offsets`` finds). ``shift_boxes(boxes, -centre_offsets(boxes))``
    centres the particles.
    """
    from scipy import fft

    v = np.asarray(boxes, dtype=np.float32)
    s = np.asarray(shifts_zyx, dtype=np.float64).reshape(len(v), 3)
    k = fft.fftfreq(v.shape[1])
    kr = fft.rfftfreq(v.shape[3])
    out = np.empty_like(v)
    for lo in range(0, len(v), 128):
        hi = min(lo + 128, len(v))
        z, y, x = (s[lo:hi, i, None, None, None] for i in range(3))
        ramp = np.exp(-2j * np.pi * (z * k[None, :, None, None] + y * k[None, None, :, None]
                                     + x * kr[None, None, None, :]))
        spec = fft.rfftn(v[lo:hi], axes=(1, 2, 3)) * ramp.astype(np.complex64)
        out[lo:hi] = fft.irfftn(spec, s=v.shape[1:], axes=(1, 2, 3))
    return out


def centre_offsets(
    boxes: np.ndarray,
    *,
    n_references: int = 10,
    max_shift: float = 4.0,
    iterations: int = 4,
    sigma: float = 1.5,
    radius: float | None = None,
    polarity: str = "dark",
    seed: int = 0,
) -> np.ndarray:
    """Where each box's particle centre lies, relative to the box centre (index B // 2).

    Args:
        boxes: (N, B, B, B) subtomograms (ZYX), particle near the centre.
        n_references: spherical references (clusters of radial profiles); about the
            number of kinds of particle, more is harmless.
        max_shift: largest offset searched, in voxels (a sphere).
        iterations: rounds of centring and rebuilding the references.
        sigma: Gaussian low-pass before correlating, in voxels.
        radius: references are cut at this radius (voxels; default 0.4 B) and made
            zero-mean inside it, so a neighbour's density outside it does not pull.
        polarity: "dark" (protein darker than ice, cryo-ET's usual) or "bright".
        seed: seed of the k-means clustering of the profiles.

    Returns:
        float64 (N, 3) offsets in voxels (z, y, x), whole voxels;
        ``shift_boxes(boxes, -offsets)`` centres the particles.

    Raises:
        ValueError: boxes that are not (N, B, B, B), or an unknown polarity.
    """
    from scipy import fft
    from sklearn.cluster import KMeans

    v = np.asarray(boxes)
    if v.ndim != 4 or len(set(v.shape[1:])) != 1:
        raise ValueError(f"centre_offsets: expected (N, B, B, B) boxes, got shape {v.shape}")
    if polarity not in ("dark", "bright"):
        raise ValueError(f"centre_offsets: polarity must be 'dark' or 'bright', got {polarity!r}")
    n, b = v.shape[0], v.shape[1]
    offsets = np.zeros((n, 3))
    if n == 0:
        return offsets
    c = b // 2
    r, ridx = _radius_index(b)
    cut = 0.4 * b if radius is None else float(radius)
    inside = r <= cut
    n_shells = int(ridx.max()) + 1
    shell_of = ridx.ravel()
    counts = np.bincount(shell_of, minlength=n_shells).astype(np.float64)
    p = _prepared(v, sigma, polarity)
    spec = [fft.rfftn(p[lo:lo + 128], axes=(1, 2, 3)) for lo in range(0, n, 128)]
    outside_search = r > max_shift

    def profiles(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64)
        sums = np.stack([np.bincount(shell_of, weights=row, minlength=n_shells) for row in flat])
        return sums / counts

    k = max(1, min(int(n_references), n))
    assign = KMeans(k, n_init=4, random_state=seed).fit_predict(profiles(p)) if k > 1 else (
        np.zeros(n, dtype=np.int64))
    for _ in range(max(1, int(iterations))):
        prof = profiles(shift_boxes(p, -offsets))
        best = np.full(n, -np.inf)
        new_offsets, new_assign = offsets.copy(), assign.copy()
        for j in range(k):
            members = assign == j
            if not members.any():
                continue
            ref = prof[members].mean(0)[ridx]
            ref = np.where(inside, ref - ref[inside].mean(), 0.0)
            norm = np.linalg.norm(ref)
            if norm == 0:
                continue
            ref_spec = np.conj(fft.rfftn(np.fft.ifftshift(ref / norm))).astype(np.complex64)
            start = 0
            for chunk in spec:
                cc = fft.irfftn(chunk * ref_spec, s=(b, b, b), axes=(1, 2, 3))
                # the reference is centred on index 0, so cc peaks at index c + offset
                cc[:, outside_search] = -np.inf
                flat = cc.reshape(len(cc), -1)
                arg = flat.argmax(1)
                top = flat[np.arange(len(cc)), arg]
                rows = np.arange(start, start + len(cc))
                better = top > best[rows]
                best[rows[better]] = top[better]
                new_offsets[rows[better]] = (
                    np.stack(np.unravel_index(arg[better], (b, b, b)), axis=1) - c
                )
                new_assign[rows[better]] = j
                start += len(cc)
        if np.array_equal(new_offsets, offsets) and np.array_equal(new_assign, assign):
            break
        offsets, assign = new_offsets, new_assign
    return offsets
