"""Scoring picks against a ground truth: the CZ Imaging Institute challenge's metric.

The CZII CryoET Object Identification challenge (Kaggle, 2024-25; data on the CZ cryoET
Data Portal) scores particle picks per kind of particle:

1. **Hit.** A pick of kind k is a hit when its centre lies within **half the particle's
   radius** (``distance <= HIT_FRACTION * radius_k``, the boundary included) of a true
   centre of kind k in the same tomogram. Matching is one-to-one: each true particle
   counts at most once and each pick at most once. The challenge's own code counts the
   distinct true particles within reach of any pick; here a maximum matching is found
   (per connected group of near pairs, `scipy.optimize.linear_sum_assignment` with the
   distance as cost), which gives the same count whenever no pick lies within reach of
   two true particles, and never fewer hits otherwise.
2. **Pooling.** TP, FP (picks that are not hits, whatever they lie on: another kind, a
   gold bead, nothing) and FN (true particles without a hit) are summed over tomograms,
   per kind.
3. **F-beta** per kind with ``beta = 4``: ``(1 + β²) P R / (β² P + R)``, so recall weighs
   β² = 16 times as much as precision (a missed particle costs more than a false pick,
   which a later classification step can remove).
4. **Overall**: the weighted mean of the per-kind F-beta. The challenge's weights
   (`CZII_WEIGHTS`) are 1 for the easy kinds, 2 for the hard ones and 0 for
   beta-amylase (reported, not scored).

Coordinates and radii must be in the same unit (voxels of one voxel size, or Å). The
functions work on plain arrays and particle tables; nothing here depends on the simulator,
so a benchmark on simulated data, the Data Portal's tomograms and a later picker all score
with this one implementation (`benchmarks/bench_picking.py`, `benchmarks/czii_portal.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "BETA",
    "CZII_RADII_A",
    "CZII_WEIGHTS",
    "HIT_FRACTION",
    "KindScore",
    "PickingScore",
    "fbeta",
    "match_one_to_one",
    "score_picks",
]

#: The challenge's beta: recall weighs beta² = 16 times as much as precision.
BETA = 4.0
#: A pick is a hit within this fraction of the particle's radius.
HIT_FRACTION = 0.5
#: Particle radii (Å) of the challenge's kinds, by their copick object names.
CZII_RADII_A = {
    "apo-ferritin": 60.0,
    "beta-amylase": 65.0,
    "beta-galactosidase": 90.0,
    "ribosome": 150.0,
    "thyroglobulin": 130.0,
    "virus-like-particle": 135.0,
}
#: The challenge's weights of the kinds in the overall score (beta-amylase: not scored).
CZII_WEIGHTS = {
    "apo-ferritin": 1.0,
    "beta-amylase": 0.0,
    "beta-galactosidase": 2.0,
    "ribosome": 1.0,
    "thyroglobulin": 2.0,
    "virus-like-particle": 1.0,
}


def fbeta(precision: float, recall: float, beta: float = BETA) -> float:
    """``(1 + β²) P R / (β² P + R)``; 0 when both are 0."""
    b2 = float(beta) ** 2
    denom = b2 * precision + recall
    return 0.0 if denom <= 0 else (1.0 + b2) * precision * recall / denom


def match_one_to_one(true_zyx, picked_zyx, max_distance: float) -> np.ndarray:
    """For each pick, the index of the true point it is matched to, or -1.

    A maximum one-to-one matching among the pairs within ``max_distance`` (inclusive),
    the total distance smallest among those: near pairs are grouped into connected
    components and each is solved with `scipy.optimize.linear_sum_assignment`.

    Args:
        true_zyx: (n, 3) true centres.
        picked_zyx: (m, 3) picks, same unit.
        max_distance: the reach of a hit (same unit).

    Returns:
        int64 (m,) indices into ``true_zyx``; -1 for picks matched to nothing.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    true_zyx = np.asarray(true_zyx, dtype=np.float64).reshape(-1, 3)
    picked_zyx = np.asarray(picked_zyx, dtype=np.float64).reshape(-1, 3)
    n, m = len(true_zyx), len(picked_zyx)
    match = np.full(m, -1, dtype=np.int64)
    if n == 0 or m == 0 or not max_distance >= 0:
        return match
    # pairs (pick, true) within reach; cKDTree's ball query includes the boundary
    pairs = cKDTree(picked_zyx).sparse_distance_matrix(
        cKDTree(true_zyx), float(max_distance), output_type="ndarray"
    )
    if len(pairs) == 0:
        return match
    picks_i = pairs["i"].astype(np.int64)
    true_j = pairs["j"].astype(np.int64)
    dist = pairs["v"].astype(np.float64)
    graph = coo_matrix((np.ones(len(pairs)), (picks_i, m + true_j)), shape=(m + n, m + n))
    _, component = connected_components(graph, directed=False)
    for c in np.unique(component[picks_i]):
        sel = component[picks_i] == c
        rows, row_inv = np.unique(picks_i[sel], return_inverse=True)
        cols, col_inv = np.unique(true_j[sel], return_inverse=True)
        # Non-pairs cost more than any set of real pairs: a maximum matching first,
        # the smallest total distance among maximum matchings second.
        big = 1.0 + float(max_distance) * (min(len(rows), len(cols)) + 1)
        cost = np.full((len(rows), len(cols)), big)
        cost[row_inv, col_inv] = dist[sel]
        r, k = linear_sum_assignment(cost)
        ok = cost[r, k] < big
        match[rows[r[ok]]] = cols[k[ok]]
    return match


@dataclass
class KindScore:
    """One kind's counts, pooled over tomograms, and its scores."""

    kind: str
    radius: float  # particle radius (the unit of the coordinates)
    weight: float
    n_true: int
    n_picks: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    fbeta: float
    picks_per_particle: float  # n_picks / n_true (nan without true particles)
    fp_on_clutter: int = 0  # false picks whose centre lies on clutter (when told)


@dataclass
class PickingScore:
    """The per-kind scores and their weighted mean (`score_picks`)."""

    beta: float
    hit_fraction: float
    kinds: dict[str, KindScore] = field(default_factory=dict)

    @property
    def fbeta(self) -> float:
        """Weighted mean of the kinds' F-beta (weights as given; 0-weight kinds left out)."""
        total = sum(k.weight for k in self.kinds.values())
        if total <= 0:
            return float("nan")
        return sum(k.weight * k.fbeta for k in self.kinds.values()) / total

    def _pooled(self) -> tuple[int, int, int]:
        scored = [k for k in self.kinds.values() if k.weight > 0]
        return (
            sum(k.tp for k in scored),
            sum(k.fp for k in scored),
            sum(k.fn for k in scored),
        )

    @property
    def recall(self) -> float:
        """TP / (TP + FN) over the scored kinds (weight > 0), all picks pooled."""
        tp, _, fn = self._pooled()
        return tp / (tp + fn) if tp + fn else float("nan")

    @property
    def precision(self) -> float:
        """TP / (TP + FP) over the scored kinds, all picks pooled."""
        tp, fp, _ = self._pooled()
        return tp / (tp + fp) if tp + fp else 0.0

    @property
    def picks_per_particle(self) -> float:
        scored = [k for k in self.kinds.values() if k.weight > 0]
        n_true = sum(k.n_true for k in scored)
        return sum(k.n_picks for k in scored) / n_true if n_true else float("nan")

    @property
    def fp_on_clutter(self) -> int:
        return sum(k.fp_on_clutter for k in self.kinds.values() if k.weight > 0)

    def to_dict(self) -> dict:
        """JSON-ready: overall figures and one entry per kind."""
        return {
            "beta": self.beta,
            "hit_fraction": self.hit_fraction,
            "fbeta": self.fbeta,
            "recall": self.recall,
            "precision": self.precision,
            "picks_per_particle": self.picks_per_particle,
            "fp_on_clutter": self.fp_on_clutter,
            "kinds": {name: asdict(k) for name, k in self.kinds.items()},
        }

    def table(self) -> str:
        """A Markdown table: one row per kind, then the weighted mean."""
        lines = [
            f"| kind | weight | true | picks | TP | FP (on clutter) | FN | recall | precision "
            f"| F{self.beta:g} |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k in self.kinds.values():
            lines.append(
                f"| {k.kind} | {k.weight:g} | {k.n_true} | {k.n_picks} | {k.tp} | "
                f"{k.fp} ({k.fp_on_clutter}) | {k.fn} | {k.recall:.3f} | {k.precision:.3f} | "
                f"{k.fbeta:.3f} |"
            )
        lines.append(
            f"| **weighted mean** | | | | | ({self.fp_on_clutter}) | | {self.recall:.3f} | "
            f"{self.precision:.3f} | **{self.fbeta:.3f}** |"
        )
        return "\n".join(lines)


def _groups(table: pd.DataFrame, kind_column: str, tomo_column: str):
    kinds = table[kind_column].astype(str).to_numpy()
    if tomo_column in table.columns:
        tomos = table[tomo_column].astype(str).to_numpy()
    else:
        tomos = np.full(len(table), "")
    return kinds, tomos


def score_picks(
    truth: pd.DataFrame,
    picks: pd.DataFrame,
    radii: Mapping[str, float],
    *,
    weights: Mapping[str, float] | None = None,
    beta: float = BETA,
    hit_fraction: float = HIT_FRACTION,
    kind_column: str = "kind",
    tomo_column: str = "tomo_name",
    on_clutter=None,
) -> PickingScore:
    """Score picks against true particles with the CZII challenge's metric (module docstring).

    Args:
        truth: true particles: x, y, z, a kind column (`kind_column`: name or class
            number, compared as text) and, with several tomograms, `tomo_column`.
        picks: the picks, same columns and unit. A pick's kind is the kind it claims.
        radii: particle radius of every kind to score (same unit as x, y, z); kinds not
            listed are ignored in both tables.
        weights: weight of each kind in the overall score (default: 1 each; the
            challenge's are `CZII_WEIGHTS`). A kind of weight 0 is reported, not scored.
        beta: F-beta's beta (4: recall weighs 16 times as much as precision).
        hit_fraction: a hit lies within this fraction of the radius (0.5).
        kind_column, tomo_column: column names. Without `tomo_column` in both tables all
            points are in one tomogram.
        on_clutter: optional bool per row of `picks`: the pick's centre lies on clutter
            (e.g. ``simulate.match_clutter(...) >= 0``); counted in ``fp_on_clutter``
            among the false picks (they are false picks like any other).

    Returns:
        `PickingScore`: per-kind `KindScore` (pooled TP, FP, FN, recall, precision,
        F-beta, picks per particle, false picks on clutter) and the weighted mean.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"score_picks: beta must be > 0, got {beta}")
    names = [str(k) for k in radii]
    radius = {str(k): float(v) for k, v in radii.items()}
    weight = {k: 1.0 for k in names}
    if weights is not None:
        weight.update({str(k): float(v) for k, v in weights.items() if str(k) in weight})
    t_kind, t_tomo = _groups(truth, kind_column, tomo_column)
    p_kind, p_tomo = _groups(picks, kind_column, tomo_column)
    if tomo_column not in truth.columns or tomo_column not in picks.columns:
        t_tomo = np.full(len(truth), "")
        p_tomo = np.full(len(picks), "")
    t_zyx = truth[["z", "y", "x"]].to_numpy(dtype=np.float64)
    p_zyx = picks[["z", "y", "x"]].to_numpy(dtype=np.float64)
    clutter = (
        np.zeros(len(picks), dtype=bool)
        if on_clutter is None
        else np.asarray(on_clutter, dtype=bool).reshape(-1)
    )
    if len(clutter) != len(picks):
        raise ValueError(
            f"score_picks: on_clutter has {len(clutter)} entries for {len(picks)} picks"
        )
    result = PickingScore(beta=float(beta), hit_fraction=float(hit_fraction))
    for name in names:
        reach = hit_fraction * radius[name]
        tp = fp_clutter = 0
        n_true = int((t_kind == name).sum())
        n_picks = int((p_kind == name).sum())
        for tomo in np.unique(np.concatenate([t_tomo[t_kind == name], p_tomo[p_kind == name]])):
            t_sel = (t_kind == name) & (t_tomo == tomo)
            p_sel = np.flatnonzero((p_kind == name) & (p_tomo == tomo))
            match = match_one_to_one(t_zyx[t_sel], p_zyx[p_sel], reach)
            tp += int((match >= 0).sum())
            fp_clutter += int((clutter[p_sel] & (match < 0)).sum())
        fp, fn = n_picks - tp, n_true - tp
        precision = tp / n_picks if n_picks else 0.0
        recall = tp / n_true if n_true else 0.0
        result.kinds[name] = KindScore(
            kind=name,
            radius=radius[name],
            weight=weight[name],
            n_true=n_true,
            n_picks=n_picks,
            tp=tp,
            fp=fp,
            fn=fn,
            precision=precision,
            recall=recall,
            fbeta=fbeta(precision, recall, beta),
            picks_per_particle=n_picks / n_true if n_true else float("nan"),
            fp_on_clutter=fp_clutter,
        )
    return result
