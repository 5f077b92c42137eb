"""The population: embeddings, map, clusters, instant classifier, suggestions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryossl.analysis.population import InstantClassifier, cluster, map_2d, suggest


def _blobs(n_per_class=50, n_classes=3, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(1, n_classes + 1), n_per_class)
    return x.astype(np.float32), y


@pytest.mark.slow
def test_fine_tuned_embeddings_cluster_by_class(tmp_path):
    """A classifier fine-tuned on well-separated particles embeds them by class: k-means
    on its embeddings of held-out particles recovers the classes (adjusted Rand index)."""
    from sklearn.metrics import adjusted_rand_score

    from napari_cryossl.analysis.population import embed_particles
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.simulate import SimulationConfig, simulate_subtomograms
    from napari_cryossl.train import FinetuneConfig, iter_finetune, run

    cfg = SimulationConfig(
        n_classes=3, box_size=16, voxel_size=20.0, snr=2.0, n_neighbors=0,
        max_shift_px=1.0, particle_diameter_a=150.0,
    )
    volumes, labels = simulate_subtomograms(30, cfg, seed=2)
    data = SubtomogramSet.from_arrays(volumes, labels, voxel_size=cfg.voxel_size)
    train, test = np.arange(0, 90, 2), np.arange(1, 90, 2)
    out = tmp_path / "classifier.pt"
    config = FinetuneConfig(device="cpu", epochs=5, min_steps=250, val_fraction=0.0)
    run(iter_finetune(data.subset(train), config, out))
    embeddings = embed_particles(out, data.subset(test), device="cpu")
    assert embeddings.shape[0] == len(test) and np.isfinite(embeddings).all()
    groups = cluster(embeddings, n_clusters=3)
    ari = adjusted_rand_score(labels[test], groups)
    print(f"adjusted Rand index {ari:.2f}")
    assert ari >= 0.6, ari


def test_map_and_clusters_of_separated_groups():
    x, y = _blobs()
    coords, method = map_2d(x, method="pca")
    assert method == "pca" and coords.shape == (len(x), 2) and np.isfinite(coords).all()
    # the groups stay apart on the map: each point's nearest map neighbour is of its class
    d = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(y, cluster(x, n_clusters=3)) > 0.95
    assert adjusted_rand_score(y, cluster(x)) > 0.9  # HDBSCAN finds the number itself


def test_instant_classifier_learns_from_a_few_labels():
    x, y = _blobs(spread=0.8)
    labels = np.zeros_like(y)
    for c in (1, 2, 3):
        labels[np.flatnonzero(y == c)[:3]] = c
    predicted, prob = InstantClassifier().fit(x, labels).predict(x)
    assert (predicted == y).mean() > 0.95
    assert np.all((prob > 1 / 3) & (prob <= 1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        InstantClassifier().fit(x, np.where(labels == 1, 1, 0))


def test_suggestions_are_unlabelled_uncertain_and_spread():
    x, y = _blobs(n_per_class=60, spread=1.5, seed=1)
    labels = np.zeros_like(y)
    labels[[0, 60, 120]] = [1, 2, 3]
    chosen = suggest(x, labels, 10, strategy="margin")
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert np.all(labels[chosen] == 0)
    # margin: more uncertain than the average unlabelled particle
    clf = InstantClassifier().fit(x, labels)
    p = np.sort(clf.predict_proba(x), axis=1)
    margin = p[:, -1] - p[:, -2]
    assert margin[chosen].mean() < margin[labels == 0].mean()
    # typical: unlabelled particles from the dense middle of the groups, not their
    # uncertain fringes
    typical = suggest(x, labels, 6, strategy="typical")
    assert np.all(labels[typical] == 0) and len(set(typical.tolist())) == 6
    centre = np.array([x[y == c].mean(0) for c in (1, 2, 3)])
    own = np.linalg.norm(x - centre[y - 1], axis=1)
    assert own[typical].mean() < own[labels == 0].mean()
    # auto (the default): typical candidates, the least certain of them, least certain first
    auto = suggest(x, labels, 6)
    candidates = suggest(x, labels, 18, strategy="typical")
    assert len(auto) == 6 and set(auto.tolist()) <= set(candidates.tolist())
    assert np.all(np.diff(margin[auto]) >= 0)
    assert margin[auto].max() <= np.sort(margin[candidates])[5] + 1e-12
    assert own[auto].mean() < own[labels == 0].mean()  # still typical, not fringe
    # without any label: one per group first
    first = suggest(x, np.zeros_like(y), 3)
    assert sorted(y[first].tolist()) == [1, 2, 3]
    assert len(suggest(x, np.ones_like(y), 5)) == 0  # nothing left to label
    with pytest.raises(ValueError, match="strategy"):
        suggest(x, labels, 3, strategy="best")
