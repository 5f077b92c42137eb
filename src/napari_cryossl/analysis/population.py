"""The whole population of particles: embeddings, a 2D map, clusters, an instant
classifier and suggestions of what to label next.

A scientist with thousands of picks labels faster when they see the structure of the
population and spend each click where it teaches most:

- ``embed_particles``: one vector per particle from an encoder or a classifier
  checkpoint (the encoder's pooled features, what the classifier's last layer reads);
- ``map_2d``: UMAP of the embeddings when umap-learn is installed (``pip install
  napari-cryossl[map]``), else PCA: coordinates for a scatter plot of every particle;
- ``cluster``: k-means or HDBSCAN (scikit-learn) groups proposed as classes;
- ``InstantClassifier``: a logistic regression on the embeddings, refitted after each
  label in well under a second for 10,000 particles, so predictions follow the clicks
  before and between fine-tunings;
- ``suggest``: the unlabelled particles worth labelling next. By default the typical
  particles (TypiClust: the densest particle of each k-means group without a label) on
  which the instant classifier is least certain (smallest margin between its two most
  likely classes): representative picks, not outliers, spent where the classifier
  still hesitates. "margin" (least certain, spread over the map by k-centre) and
  "typical" alone are there too.

GUI-free; the CLI's ``embed`` and ``suggest`` and the napari map are thin layers over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_cryossl.base.options import BATCH_HELP, device_option, option

__all__ = [
    "EmbedSettings",
    "InstantClassifier",
    "SuggestSettings",
    "cluster",
    "embed_particles",
    "iter_embed_particles",
    "map_2d",
    "map_and_cluster",
    "suggest",
]


@dataclass
class EmbedSettings:
    """What a user chooses for the population map, declared once for ``cryossl embed``
    (and the map dock to come; ``options.py``)."""

    map: str = option(
        "auto",
        "2D map: UMAP (umap-learn, `pip install napari-cryossl[map]`) or PCA; auto: UMAP "
        "when installed",
        choices=("auto", "umap", "pca"),
    )
    clusters: int | None = option(
        None, "k-means with this many clusters (default: HDBSCAN finds them)", minimum=1
    )
    seed: int = option(0, "seeds the map and the clusters", minimum=0)
    device: str = device_option()
    batch_size: int = option(64, BATCH_HELP, minimum=1)


@dataclass
class SuggestSettings:
    """What a user chooses for ``cryossl suggest`` (declared once, ``options.py``)."""

    n: int = option(20, "how many particles to suggest", minimum=1)
    strategy: str = option(
        "auto",
        "typical: the most typical particle of each group without a label; margin: the "
        "least certain, spread out; auto: typical particles, the least certain of them "
        "first (typical alone while one class has labels)",
        choices=("auto", "typical", "margin"),
    )
    device: str = device_option()
    batch_size: int = option(64, BATCH_HELP, minimum=1)


def iter_embed_particles(
    model_or_checkpoint, data, *, device="auto", batch_size: int = EmbedSettings.batch_size
):
    """Embed every particle of ``data`` batch by batch: the generator form that the dock
    runs in a worker (progress, cancel). Yields a ``status.Progress`` (stage "embed", one
    step per batch), then the (N, F) float32 embeddings in the set's order.

    ``model_or_checkpoint``: an encoder or classifier checkpoint path, its loaded state,
    or an encoder module (e.g. random weights, for a first look).
    """
    import math
    import time

    import torch

    from napari_cryossl.base.status import Progress
    from napari_cryossl.nn.checkpoints import encoder_from_checkpoint, load_checkpoint
    from napari_cryossl.nn.devices import (
        amp_dtype,
        autocast,
        memory_format,
        select_device,
        to_device,
    )
    from napari_cryossl.nn.models import for_inference

    t0 = time.perf_counter()
    device = select_device(device)
    if isinstance(model_or_checkpoint, torch.nn.Module):
        encoder = model_or_checkpoint
    else:
        state = (
            model_or_checkpoint
            if isinstance(model_or_checkpoint, dict)
            else load_checkpoint(model_or_checkpoint, box_size=data.box_size)
        )
        encoder = encoder_from_checkpoint(state)
    dtype = amp_dtype(device)
    encoder = for_inference(encoder, dtype).to(device, memory_format=memory_format(device))
    b, n, step = int(encoder.box_size), len(data), max(int(batch_size), 1)
    n_steps = max(math.ceil(n / step), 1)
    out = []
    for k, start in enumerate(range(0, n, step)):
        idx = np.arange(start, min(start + step, n))
        x = torch.from_numpy(np.asarray(data.load(idx), dtype=np.float32))
        with torch.inference_mode(), autocast(device, dtype):  # per batch, not while suspended
            x = to_device(x.reshape(len(idx), 1, b, b, b), device)
            out.append(encoder(x).float().cpu().numpy())
        yield Progress(
            stage="embed", step=k + 1, n_steps=n_steps, unit="batch",
            metrics={"particles": int(idx[-1]) + 1}, elapsed_s=time.perf_counter() - t0,
        )
    yield np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)


def embed_particles(
    model_or_checkpoint, data, *, device="auto", batch_size: int = EmbedSettings.batch_size
) -> np.ndarray:
    """(N, F) float32 embeddings of every particle of ``data`` (a ``SubtomogramSet``).

    ``model_or_checkpoint``: an encoder or classifier checkpoint path, or its loaded state.
    """
    result = None
    for item in iter_embed_particles(
        model_or_checkpoint, data, device=device, batch_size=batch_size
    ):
        result = item
    return result


def _standardised(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def map_2d(embeddings: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2D coordinates of every particle for a map of the population.

    Args:
        embeddings: (N, F).
        method: "umap" (needs umap-learn), "pca", or "auto" (UMAP when installed and
            N > 15, else PCA).
        seed: makes UMAP repeatable.

    Returns:
        ((N, 2) float32 coordinates, the method used).
    """
    x = _standardised(embeddings)
    n = len(x)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"map method must be 'auto', 'umap' or 'pca', got {method!r}")
    if method in ("auto", "umap") and n > 15:
        try:
            import umap  # umap-learn
        except ImportError:
            if method == "umap":
                raise ImportError(
                    "the UMAP map needs umap-learn: pip install 'napari-cryossl[map]' "
                    "(or choose the PCA map)"
                ) from None
        else:
            # UMAP's neighbour search on the leading 50 components: the same map, several
            # times faster than on hundreds of features (the usual practice).
            # 200 layout epochs (UMAP's own choice above 10,000 points; 500 below)
            pcs = principal_components(x, 50).astype(np.float32)
            k = min(15, n - 1)
            reducer = umap.UMAP(
                n_components=2, random_state=int(seed), n_neighbors=k,
                n_epochs=200 if n > 2000 else None,
                precomputed_knn=_exact_neighbours(pcs, k) if n <= EXACT_KNN_UNTIL else (None,) * 3,
            )
            coords = reducer.fit_transform(pcs)
            return coords.astype(np.float32), "umap"
    if n == 0:
        return np.zeros((0, 2), np.float32), "pca"
    coords = principal_components(x, 2)
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords.astype(np.float32), "pca"


#: ``map_2d`` finds UMAP's neighbours exactly (scikit-learn, brute force on 50
#: components) up to this many particles, and leaves larger sets to UMAP's approximate
#: search (pynndescent). Exact is better, and faster where it counts: pynndescent's numba
#: functions compile on their first call of each process, about 30 s on a 2-core CPU,
#: while the exact search of 10,000 particles takes 0.3 s (docs/benchmarks.md).
EXACT_KNN_UNTIL = 50_000


def _exact_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each point's ``k`` nearest neighbours, itself first, in the
    form UMAP's ``precomputed_knn`` takes."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    return indices.astype(np.int32), distances.astype(np.float32)


def principal_components(x: np.ndarray, k: int) -> np.ndarray:
    """The projections of ``x`` (N, F) on its ``k`` leading principal axes, (N, min(k, F)).

    From the eigenvectors of the F x F covariance (``numpy.linalg.eigh``): for the few
    hundred features of an encoder this is many times faster than an SVD of the N x F
    matrix, and its cost does not grow with N beyond one matrix product. Signs are fixed
    (largest loading positive), so the same data always gives the same map.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] <= k:
        return x - x.mean(0)
    centred = x - x.mean(0)
    _w, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, ::-1][:, :k]
    axes *= np.sign(axes[np.abs(axes).argmax(0), np.arange(k)])
    return centred @ axes


def cluster(
    embeddings: np.ndarray, *, n_clusters: int | None = None, method: str = "auto", seed: int = 0
) -> np.ndarray:
    """Group the particles: cluster numbers 1..K, 0 = noise (HDBSCAN only).

    Args:
        embeddings: (N, F) (standardised here).
        n_clusters: k-means with this many clusters; None: HDBSCAN finds the number.
        method: "kmeans", "hdbscan" or "auto" (k-means when ``n_clusters`` is given).
    """
    x = _standardised(embeddings)
    if len(x) == 0:
        return np.zeros(0, np.int64)
    if method == "auto":
        method = "kmeans" if n_clusters else "hdbscan"
    if method == "kmeans":
        from sklearn.cluster import KMeans

        k = int(n_clusters or 8)
        k = max(1, min(k, len(x)))
        labels = KMeans(n_clusters=k, n_init=4, random_state=int(seed)).fit_predict(x)
        return labels.astype(np.int64) + 1
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        # HDBSCAN works on the leading principal components: distances in hundreds of
        # dimensions are all alike.
        # (10 components and min_samples 10: 10,000 particles in about 2 s on one core.)
        coords = principal_components(x, 10)
        labels = HDBSCAN(
            min_cluster_size=max(5, len(x) // 100), min_samples=min(10, max(len(x) // 100, 1)),
            copy=True,
        ).fit_predict(coords)
        return labels.astype(np.int64) + 1  # -1 (noise) -> 0
    raise ValueError(f"cluster method must be 'kmeans', 'hdbscan' or 'auto', got {method!r}")


def map_and_cluster(
    embeddings: np.ndarray, *, method: str = "auto", n_clusters: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, str, np.ndarray]:
    """``map_2d`` and ``cluster`` of the same embeddings, in one call (``cryossl embed``,
    and the dock in its helper process): ((N, 2) coordinates, the map method used, (N,)
    cluster numbers)."""
    coords, used = map_2d(embeddings, method=method, seed=seed)
    return coords, used, cluster(embeddings, n_clusters=n_clusters, seed=seed)


@dataclass
class InstantClassifier:
    """Logistic regression on embeddings, fitted on the labelled particles.

    Attributes after ``fit``: ``classes`` (the class numbers it knows), ``weight``,
    ``bias`` (acting on raw embeddings).
    """

    l2: float = 1e-2
    max_iter: int = 100

    def fit(self, embeddings: np.ndarray, class_numbers) -> InstantClassifier:
        """Fit on the rows with a class number > 0 (at least two classes needed).

        scikit-learn's multinomial logistic regression (L-BFGS) on the embeddings
        standardised with the statistics of *all* rows (the population, labelled or
        not): tens of milliseconds, with nothing to warm up, so the dock can refit on
        its own thread after every click.
        """
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(embeddings, dtype=np.float64)
        labels = np.asarray(class_numbers, dtype=np.int64)
        keep = labels > 0
        classes = np.unique(labels[keep])
        if len(classes) < 2:
            raise ValueError(
                f"the instant classifier needs labels of at least 2 classes, got {len(classes)}"
            )
        mean, std = x.mean(0), x.std(0) + 1e-6
        # mean loss + l2 * |w|^2  <=>  sklearn's C * sum(loss) + |w|^2 / 2
        c = 1.0 / (2.0 * self.l2 * max(int(keep.sum()), 1))
        model = LogisticRegression(C=c, max_iter=self.max_iter).fit(
            (x[keep] - mean) / std, labels[keep]
        )
        # fold the standardisation in: weight and bias act on raw embeddings
        coef = np.atleast_2d(model.coef_) / std
        intercept = np.atleast_1d(model.intercept_) - coef @ mean
        if len(classes) == 2:  # sklearn's binary form: one row for the second class
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        self.weight, self.bias = coef, intercept
        self.classes = np.asarray(model.classes_, dtype=np.int64)
        return self

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) probabilities of ``classes``."""
        logits = np.asarray(embeddings, dtype=np.float64) @ self.weight.T + self.bias
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class number, probability of that class) for every particle."""
        p = self.predict_proba(embeddings)
        best = p.argmax(1)
        return self.classes[best], p[np.arange(len(p)), best]


def _min_distance(points: np.ndarray, centres: np.ndarray, block: int = 1024) -> np.ndarray:
    """Distance of each point to its nearest centre (in blocks of centres: bounded memory)."""
    out = np.full(len(points), np.inf)
    for start in range(0, len(centres), block):
        c = centres[start : start + block]
        out = np.minimum(out, np.linalg.norm(points[:, None, :] - c[None], axis=2).min(1))
    return out


def _k_centre(x: np.ndarray, pool: np.ndarray, centres: np.ndarray, n: int) -> list[int]:
    """Greedy farthest-first choice of ``n`` rows of ``pool``, away from ``centres`` (rows
    already labelled); with no centre, the first is the one nearest the pool's mean."""
    if len(pool) == 0 or n <= 0:
        return []
    points = x[pool]
    chosen: list[int] = []
    if len(centres):
        d = _min_distance(points, x[centres])
    else:
        first = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
        chosen.append(first)
        d = np.linalg.norm(points - points[first], axis=1)
    d[chosen] = -1.0
    while len(chosen) < min(n, len(pool)):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
        d[chosen] = -1.0
    return [int(pool[i]) for i in chosen]


def _typical(x: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """TypiClust (Hacohen et al. 2022, "Active learning on a budget"): k-means with
    (labelled + n) clusters; from the largest clusters that hold no label yet, the most
    typical particle (the smallest mean distance to its 20 nearest neighbours in its
    cluster). With few labels, typical particles of uncovered groups teach a classifier
    more than uncertain ones, which are mostly outliers then."""
    from sklearn.cluster import KMeans

    labelled = np.flatnonzero(labels > 0)
    k = min(len(labelled) + n, len(x))
    groups = KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(
        principal_components(x, 32)
    )
    covered = set(groups[labelled].tolist())
    sizes = np.bincount(groups, minlength=k)
    order = [g for g in np.argsort(-sizes, kind="stable") if g not in covered and sizes[g]]
    chosen: list[int] = []
    for g in order[:n]:
        members = np.flatnonzero((groups == g) & (labels <= 0))
        if not len(members):
            continue
        pts = x[members]
        d = np.linalg.norm(pts[:, None, :] - pts[None], axis=2) if len(pts) <= 2000 else None
        if d is None:  # a huge cluster: the member nearest its mean
            chosen.append(int(members[np.argmin(np.linalg.norm(pts - pts.mean(0), axis=1))]))
            continue
        m = min(20, len(pts) - 1)
        knn = np.sort(d, axis=1)[:, 1 : m + 1].mean(1) if m > 0 else np.zeros(len(pts))
        chosen.append(int(members[np.argmin(knn)]))
    return chosen


def _margins(x: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How sure the instant classifier fitted on ``labels`` is of each of ``rows``: the
    gap between its two most likely classes (small: uncertain)."""
    p = InstantClassifier().fit(x, labels).predict_proba(x[rows])
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


#: ``suggest(strategy="auto")`` draws this many typical candidates (TypiClust) per
#: particle asked for and keeps the least certain of them under the instant classifier.
#: With few labels every candidate is uncertain and auto is TypiClust; as the labels grow,
#: the typical particles of groups the classifier already gets right are passed over for
#: those of groups it hesitates on, with no threshold to switch at. Chosen (3, between 2
#: and 5, which did alike) on two demo encoders and confirmed on a third
#: (docs/benchmarks.md, "Suggestions vs random clicks").
TYPICAL_CANDIDATES = 3


def resolved_strategy(class_numbers, strategy: str = "auto") -> str:
    """What ``suggest`` does for these labels: "typical", "margin" or "auto" ("auto" is
    "typical" until two classes have labels: no classifier to be uncertain under)."""
    if strategy != "auto":
        return strategy
    labels = np.asarray(class_numbers, dtype=np.int64)
    return "auto" if len(np.unique(labels[labels > 0])) >= 2 else "typical"


def suggest(
    embeddings: np.ndarray,
    class_numbers,
    n: int,
    *,
    candidates: int = 5,
    strategy: str = "auto",
) -> np.ndarray:
    """The ``n`` unlabelled particles most worth labelling next, most informative first.

    Args:
        embeddings: (N, F).
        class_numbers: (N,) labels (0 = unlabelled).
        n: how many to suggest.
        candidates: the k-centre choice runs over the ``candidates × n`` least certain
            particles (margin sampling), so the suggestions are both uncertain and spread.
        strategy: "margin" (the least certain under the instant classifier, spread by
            k-centre), "typical" (TypiClust: typical particles of groups without a
            label) or "auto" (``TYPICAL_CANDIDATES`` × n typical particles, the least
            certain of them first).

    Returns:
        Row indices (int64), at most ``n``, none of them labelled.
    """
    if strategy not in ("auto", "margin", "typical"):
        raise ValueError(f"strategy must be 'auto', 'margin' or 'typical', got {strategy!r}")
    x = _standardised(embeddings)
    labels = np.asarray(class_numbers, dtype=np.int64)
    unlabelled = np.flatnonzero(labels <= 0)
    labelled = np.flatnonzero(labels > 0)
    n = int(n)
    if n <= 0 or len(unlabelled) == 0:
        return np.zeros(0, np.int64)
    n_classes = len(np.unique(labels[labelled]))
    strategy = resolved_strategy(labels, strategy)
    if strategy in ("typical", "auto"):
        want = n if strategy == "typical" else TYPICAL_CANDIDATES * n
        chosen = _typical(x, labels, want)
        if len(chosen) < want:  # fewer uncovered groups than asked: spread the rest
            rest = np.setdiff1d(unlabelled, chosen)
            chosen += _k_centre(x, rest, np.concatenate([labelled, chosen]).astype(np.int64),
                                want - len(chosen))
        chosen = np.asarray(chosen, dtype=np.int64)
        if strategy == "auto" and len(chosen) > n:  # the least certain candidates first
            chosen = chosen[np.argsort(_margins(x, labels, chosen), kind="stable")]
        return chosen[:n]
    pool = unlabelled
    if n_classes >= 2:
        order = np.argsort(_margins(x, labels, unlabelled), kind="stable")
        pool = unlabelled[order[: max(n * int(candidates), n)]]
    return np.asarray(_k_centre(x, pool, labelled, n), dtype=np.int64)
