"""Self-supervised objectives: MoCo v2, SimCLR and SwAV (contrastive), SimSiam and BYOL
(non-contrastive).

Each objective is a small ``nn.Module`` that owns the encoder being pretrained
plus its method-specific parts (projection head, momentum encoder and queue,
prototypes, predictor, target network). The training loop (``train/``) only does::

    objective = build_ssl("moco", encoder)
    loss = objective(augment(x), augment(x))    # two views of the same boxes
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    objective.after_optimizer_step(progress)    # momentum / target update, prototypes

and afterwards saves ``objective.encoder`` (the part fine-tuning starts from).

The losses, heads and momentum utilities are lightly's (``lightly.loss``,
``lightly.models.modules``, ``lightly.models.utils``); lightly is imported inside
the constructors because it is slow to import and pulls in many dependencies.
Hyper-parameters and where they come from are in ``SSL_DEFAULTS`` and
``docs/model.md``.

Shapes: views are (N, 1, B, B, B) float tensors (ZYX boxes); the encoder maps
them to (N, F); the projection heads to (N, projection_dim).

The non-contrastive methods need no negatives: one view's projection predicts the
other's through a small prediction head, and what keeps them from collapsing onto one
constant output is the stop-gradient (SimSiam) or a slowly moving target network (BYOL).
``embedding_std`` measures collapse the way the SimSiam paper does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "BYOL",
    "SSL_DEFAULTS",
    "MoCo",
    "SSLObjective",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "build_ssl",
    "embedding_std",
]

#: Default hyper-parameters per method. Model-side keys are consumed by the
#: objective; loop-side keys (lr, weight_decay, optimizer, batch_size, epochs)
#: by ``train/`` and ``SSLObjective.configure_optimizer``.
#:
#: - moco: Gupta et al. (2022), simulated data: queue 128 (64 for their real
#:   data), m = 0.999 fixed, tau = 0.2, Adam lr 1e-4, weight decay 1e-4,
#:   batch 16, 200 epochs; MoCo v2 head (2-layer MLP, 128-d output).
#: - simclr: Chen et al. (2020) use LARS with batches of 4096 and tau = 0.1; with
#:   the small batches subtomogram sets allow, in-batch negatives are few, and
#:   tau = 0.5 (their CIFAR-10 setting, lightly's default) trains more stably.
#:   Adam replaces LARS (LARS only pays off for very large batches); weight
#:   decay 1e-6 as in SimCLR; batch 64 for more negatives.
#: - swav: Caron et al. (2020): tau = 0.1, 3 Sinkhorn iterations, epsilon 0.05,
#:   prototypes frozen for the first epoch and re-normalised after every step.
#:   Their 3000 prototypes suit ImageNet; a subtomogram set has a handful of
#:   structures, so 30 prototypes (about 3 x the classes of a typical set;
#:   override with ``n_prototypes``). Adam instead of LARS, weight decay 1e-6,
#:   batch 64.
#: - simsiam: Chen & He (2021), arXiv:2011.10566: 3-layer projection MLP with BN on
#:   every layer, 2-layer bottleneck predictor (hidden = projection / 4), symmetrised
#:   negative cosine with a stop-gradient. Their SGD lr 0.05 x batch / 256 suits
#:   ImageNet batches of 512; here Adam lr 1e-3 (what MoCo needed on rb3d-small,
#:   docs/training.md), weight decay 1e-4 as in SimSiam, batch 16 like MoCo.
#:   projection_dim 256 = rb3d-small's feature size (SimSiam keeps the backbone's).
#: - byol: Grill et al. (2020), arXiv:2006.07733: projection and prediction MLPs
#:   (Linear-BN-ReLU-Linear), target network = EMA of the online encoder and
#:   projection with the momentum rising from 0.99 to 1 along a cosine (their 0.996
#:   is for ~300k steps; short runs want a faster target). Adam lr 1e-3, weight decay
#:   1e-4 (LARS and 1.5e-6 are for batches of 4096), batch 16.
SSL_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "moco": {
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "optimizer": "adam",
        "batch_size": 16,
        "epochs": 200,
        "temperature": 0.2,
        "queue_size": 128,
        "momentum": 0.999,
        "momentum_schedule": "fixed",  # or "cosine": momentum -> 1 over training
        "projection_dim": 128,
        "hidden_dim": None,  # None: the encoder's feature_dim
        "shuffle_bn": True,  # MoCo's batch shuffle for the key encoder (matters with BatchNorm)
    },
    "simclr": {
        "lr": 1e-4,
        "weight_decay": 1e-6,
        "optimizer": "adam",
        "batch_size": 64,
        "epochs": 200,
        "temperature": 0.5,
        "projection_dim": 128,
        "hidden_dim": None,
    },
    "swav": {
        "lr": 1e-4,
        "weight_decay": 1e-6,
        "optimizer": "adam",
        "batch_size": 64,
        "epochs": 200,
        "temperature": 0.1,
        "n_prototypes": 30,
        "sinkhorn_iterations": 3,
        "sinkhorn_epsilon": 0.05,
        "freeze_prototypes_epochs": 1,
        "projection_dim": 128,
        "hidden_dim": None,
    },
    "simsiam": {
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "optimizer": "adam",
        "batch_size": 16,
        "epochs": 200,
        "projection_dim": 256,
        "hidden_dim": None,  # None: the encoder's feature_dim
        "prediction_hidden_dim": 64,  # the predictor's bottleneck (projection_dim / 4)
    },
    "byol": {
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "optimizer": "adam",
        "batch_size": 16,
        "epochs": 200,
        "momentum": 0.99,
        "momentum_schedule": "cosine",  # or "fixed"
        "projection_dim": 128,
        "hidden_dim": None,  # None: 2 x the encoder's feature_dim
        "prediction_hidden_dim": None,  # None: the projection's hidden size
    },
}

_OPTIMIZERS = ("adam", "adamw", "sgd", "lars")


class SSLObjective(nn.Module):
    """Base class: an encoder plus what a self-supervised method needs around it.

    Args:
        encoder: the network being pretrained, (N, 1, B, B, B) -> (N, feature_dim),
            with a ``feature_dim`` attribute (e.g. ``models.build_encoder()``).
        hparams: the method's hyper-parameters (defaults merged with overrides).

    Attributes:
        encoder: the pretrained network (save this one).
        method: a key of ``SSL_DEFAULTS``.
        hparams: dict of hyper-parameters in use.
        progress: fraction of training done, as last reported to
            ``after_optimizer_step`` (0 before the first step).
    """

    method = ""

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__()
        if not hasattr(encoder, "feature_dim"):
            raise TypeError("the encoder needs a feature_dim attribute (see models.build_encoder)")
        self.encoder = encoder
        self.hparams = dict(hparams)
        self.progress = 0.0

    @property
    def feature_dim(self) -> int:
        return int(self.encoder.feature_dim)

    def _hidden_dim(self) -> int:
        hidden = self.hparams.get("hidden_dim")
        return self.feature_dim if hidden is None else int(hidden)

    @staticmethod
    def _check_views(view1: torch.Tensor, view2: torch.Tensor, min_batch: int) -> None:
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have the same shape, got {tuple(view1.shape)} "
                f"and {tuple(view2.shape)}"
            )
        if view1.shape[0] < min_batch:
            raise ValueError(
                f"this objective needs batches of at least {min_batch} subtomograms, "
                f"got {view1.shape[0]} (use a larger batch or drop the last, partial batch)"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, feature_dim) representation used downstream."""
        return self.encoder(x)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Two augmented views of the same N boxes -> scalar loss."""
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Call once after every optimizer step.

        Args:
            progress: fraction of training completed (e.g. ``global_step /
                total_steps``); schedules depend on it. Values outside [0, 1]
                (extra warm-up or resumed steps) are clipped.
        """
        self.progress = min(max(float(progress), 0.0), 1.0)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer should update (momentum copies excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer named in ``hparams`` ("adam", "adamw", "sgd" or "lars").

        Prototypes that are frozen at the start (SwAV) are included: the
        optimizer skips parameters without gradients.
        """
        name = str(self.hparams.get("optimizer", "adam")).lower()
        lr = float(self.hparams["lr"])
        wd = float(self.hparams.get("weight_decay", 0.0))
        params = [p for p in self.parameters() if p.requires_grad or self._freezable(p)]
        if name in {"adam", "adamw"}:
            from napari_cryossl.nn.devices import fused_adam

            kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            return kind(params, lr=lr, weight_decay=wd, fused=fused_adam(params))
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9)
        if name == "lars":
            from lightly.utils.lars import LARS

            return LARS(params, lr=lr, weight_decay=wd, momentum=0.9)
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(_OPTIMIZERS)}")

    def _freezable(self, p: nn.Parameter) -> bool:
        return False


class MoCo(SSLObjective):
    """MoCo v2: query encoder + MLP head, momentum key encoder + head, queue of keys.

    He et al. (2020), arXiv:1911.05722; Chen et al. (2020), arXiv:2003.04297;
    used for cryo-ET subtomograms by Gupta et al. (2022).

    The loss is InfoNCE over one positive (the key of the other view) and the
    ``queue_size`` keys of earlier batches (lightly ``NTXentLoss`` with a memory
    bank). The bank is read *before* the current keys are enqueued, so a
    sample's own key is never one of its negatives; keys enter the queue
    first-in-first-out. The key encoder follows the query encoder as an
    exponential moving average, ``k <- m k + (1 - m) q``, in
    ``after_optimizer_step``, and never receives gradients.

    The queue is a non-persistent buffer (not in ``state_dict``): resuming a run
    starts from a fresh random queue, which is refilled after
    ``queue_size / batch_size`` steps.
    """

    method = "moco"

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__(encoder, hparams)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        _check_momentum(self.hparams)
        queue_size = int(self.hparams["queue_size"])
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        dim = int(self.hparams["projection_dim"])
        self.projection_head = MoCoProjectionHead(self.feature_dim, self._hidden_dim(), dim)
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.key_encoder)
        deactivate_requires_grad(self.key_projection_head)
        self.criterion = NTXentLoss(
            temperature=float(self.hparams["temperature"]), memory_bank_size=(queue_size, dim)
        )
        self.momentum = float(self.hparams["momentum"])

    @property
    def queue(self) -> torch.Tensor:
        """(queue_size, projection_dim) L2-normalised keys of earlier batches."""
        return self.criterion.memory_bank.bank

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Query branch: (N, 1, B, B, B) -> (N, projection_dim), not normalised."""
        return self.projection_head(self.encoder(x))

    @torch.no_grad()
    def project_key(self, x: torch.Tensor) -> torch.Tensor:
        """Key branch (momentum encoder), without gradients."""
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        if self.hparams["shuffle_bn"] and x.shape[0] > 1:
            # Shuffled batches give the key encoder's BatchNorm (if any) other
            # statistics than the query's, so BN cannot leak the positive pair.
            x, order = batch_shuffle(x)
            return batch_unshuffle(self.key_projection_head(self.key_encoder(x)), order)
        return self.key_projection_head(self.key_encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """InfoNCE of queries (view1) against keys (view2) and the queue -> scalar.

        In training mode (queries need gradients) the keys are enqueued after
        the loss has been computed against the old queue.
        """
        self._check_views(view1, view2, min_batch=1)
        query = self.project(view1)
        key = self.project_key(view2)
        return self.criterion(query, key)

    def current_momentum(self) -> float:
        """Momentum for the next update: fixed, or cosine from ``momentum`` to 1."""
        return _momentum(self.momentum, self.hparams["momentum_schedule"], self.progress)

    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the key encoder and head from the (just stepped) query side."""
        from lightly.models.utils import update_momentum

        super().after_optimizer_step(progress)
        m = self.current_momentum()
        update_momentum(self.encoder, self.key_encoder, m)
        update_momentum(self.projection_head, self.key_projection_head, m)


class SimCLR(SSLObjective):
    """SimCLR: shared encoder + MLP head, NT-Xent over the other 2N - 2 views.

    Chen et al. (2020), arXiv:2002.05709; lightly ``NTXentLoss`` (no memory bank)
    and ``SimCLRProjectionHead`` (2-layer MLP with BatchNorm, so at least two
    subtomograms per batch).
    """

    method = "simclr"

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__(encoder, hparams)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        dim = int(self.hparams["projection_dim"])
        self.projection_head = SimCLRProjectionHead(self.feature_dim, self._hidden_dim(), dim)
        self.criterion = NTXentLoss(temperature=float(self.hparams["temperature"]))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, projection_dim), not normalised."""
        return self.projection_head(self.encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """NT-Xent of the 2N projections -> scalar."""
        self._check_views(view1, view2, min_batch=2)
        return self.criterion(self.project(view1), self.project(view2))


class SwAV(SSLObjective):
    """SwAV: swapped prediction of Sinkhorn cluster codes between two views.

    Caron et al. (2020), arXiv:2006.09882; lightly ``SwaVProjectionHead``,
    ``SwaVPrototypes`` and ``SwaVLoss`` (Sinkhorn-Knopp equipartition). Two views
    of equal size (no multi-crop: the paper's pipeline makes two views). The
    prototypes are frozen while ``progress < freeze_prototypes_epochs / epochs``
    (SwAV freezes them for the first epoch) and re-normalised to unit length
    after every optimizer step.
    """

    method = "swav"

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__(encoder, hparams)
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        dim = int(self.hparams["projection_dim"])
        n_prototypes = int(self.hparams["n_prototypes"])
        if n_prototypes < 2:
            raise ValueError(f"n_prototypes must be at least 2, got {n_prototypes}")
        self.projection_head = SwaVProjectionHead(self.feature_dim, self._hidden_dim(), dim)
        self.prototypes = SwaVPrototypes(dim, n_prototypes)
        self.prototypes.normalize()
        self.criterion = SwaVLoss(
            temperature=float(self.hparams["temperature"]),
            sinkhorn_iterations=int(self.hparams["sinkhorn_iterations"]),
            sinkhorn_epsilon=float(self.hparams["sinkhorn_epsilon"]),
        )
        epochs = max(int(self.hparams["epochs"]), 1)
        self.freeze_until = min(float(self.hparams["freeze_prototypes_epochs"]) / epochs, 1.0)

    @property
    def prototypes_frozen(self) -> bool:
        return self.progress < self.freeze_until

    def _freezable(self, p: nn.Parameter) -> bool:
        return any(p is q for q in self.prototypes.parameters())

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, n_prototypes) cosine similarities to the prototypes."""
        z = nn.functional.normalize(self.projection_head(self.encoder(x)), dim=1)
        return self.prototypes(z)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes (N, n_prototypes): soft, equipartitioned cluster assignments."""
        from lightly.loss.swav_loss import sinkhorn

        return sinkhorn(
            self.scores(x),
            iterations=int(self.hparams["sinkhorn_iterations"]),
            epsilon=float(self.hparams["sinkhorn_epsilon"]),
        )

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Swapped-prediction loss of the two views -> scalar."""
        self._check_views(view1, view2, min_batch=2)
        self.prototypes.requires_grad_(not self.prototypes_frozen)
        return self.criterion([self.scores(view1), self.scores(view2)], []).squeeze()

    def after_optimizer_step(self, progress: float) -> None:
        """Re-project the prototypes onto the unit sphere."""
        super().after_optimizer_step(progress)
        self.prototypes.normalize()


class SimSiam(SSLObjective):
    """SimSiam: one view's projection predicts the other's, through a stop-gradient.

    Chen & He (2021), arXiv:2011.10566. No negatives, no momentum encoder, no queue:
    ``p = h(z)``, ``z = g(f(x))`` and the loss is
    ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D`` the negative cosine similarity
    (lightly ``NegativeCosineSimilarity``), so it lies in [-1, 1] and a perfect
    prediction gives -1. The stop-gradient is what prevents the collapse onto a
    constant output (the paper's section 4.1); ``embedding_std`` watches it. Heads:
    lightly ``SimSiamProjectionHead`` (3 layers, BN on each, the output's BN without
    affine) and ``SimSiamPredictionHead`` (bottleneck; BN, so at least 2 subtomograms
    per batch).
    """

    method = "simsiam"

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__(encoder, hparams)
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        dim = int(self.hparams["projection_dim"])
        bottleneck = int(self.hparams["prediction_hidden_dim"])
        self.projection_head = SimSiamProjectionHead(self.feature_dim, self._hidden_dim(), dim)
        self.prediction_head = SimSiamPredictionHead(dim, bottleneck, dim)
        self.criterion = NegativeCosineSimilarity()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, projection_dim) ``z``, not normalised."""
        return self.projection_head(self.encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Symmetrised negative cosine of predictions against stopped projections -> scalar."""
        self._check_views(view1, view2, min_batch=2)
        z1, z2 = self.project(view1), self.project(view2)
        p1, p2 = self.prediction_head(z1), self.prediction_head(z2)
        return 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))


class BYOL(SSLObjective):
    """BYOL: the online network predicts a slowly moving target network's projection.

    Grill et al. (2020), arXiv:2006.07733. Online: encoder, projection head, prediction
    head; target: a copy of encoder and projection head that never gets gradients and
    follows the online weights as an exponential moving average,
    ``t <- m t + (1 - m) o`` after every optimiser step, with ``m`` rising from
    ``momentum`` to 1 along a cosine (``momentum_schedule="cosine"``, BYOL's). The loss
    is the symmetrised negative cosine of each view's prediction against the other
    view's target projection (BYOL's ``2 - 2 cos`` up to an affine map), in [-1, 1].
    Heads: lightly ``BYOLProjectionHead`` / ``BYOLPredictionHead`` (Linear-BN-ReLU-Linear;
    at least 2 subtomograms per batch).
    """

    method = "byol"

    def __init__(self, encoder: nn.Module, hparams: dict[str, Any]):
        super().__init__(encoder, hparams)
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        _check_momentum(self.hparams)
        dim = int(self.hparams["projection_dim"])
        hidden = self.hparams.get("hidden_dim")
        hidden = 2 * self.feature_dim if hidden is None else int(hidden)
        pred_hidden = self.hparams.get("prediction_hidden_dim")
        pred_hidden = hidden if pred_hidden is None else int(pred_hidden)
        self.projection_head = BYOLProjectionHead(self.feature_dim, hidden, dim)
        self.prediction_head = BYOLPredictionHead(dim, pred_hidden, dim)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projection_head)
        self.criterion = NegativeCosineSimilarity()
        self.momentum = float(self.hparams["momentum"])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Online projection: (N, 1, B, B, B) -> (N, projection_dim), not normalised."""
        return self.projection_head(self.encoder(x))

    @torch.no_grad()
    def project_target(self, x: torch.Tensor) -> torch.Tensor:
        """Target projection (the EMA network), without gradients."""
        return self.target_projection_head(self.target_encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Symmetrised negative cosine of online predictions against target projections."""
        self._check_views(view1, view2, min_batch=2)
        p1 = self.prediction_head(self.project(view1))
        p2 = self.prediction_head(self.project(view2))
        t1, t2 = self.project_target(view1), self.project_target(view2)
        return 0.5 * (self.criterion(p1, t2) + self.criterion(p2, t1))

    def current_momentum(self) -> float:
        """Momentum for the next update: fixed, or cosine from ``momentum`` to 1."""
        return _momentum(self.momentum, self.hparams["momentum_schedule"], self.progress)

    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the target encoder and projection head."""
        from lightly.models.utils import update_momentum

        super().after_optimizer_step(progress)
        m = self.current_momentum()
        update_momentum(self.encoder, self.target_encoder, m)
        update_momentum(self.projection_head, self.target_projection_head, m)


def _check_momentum(hparams: Mapping[str, Any]) -> None:
    if hparams["momentum_schedule"] not in ("fixed", "cosine"):
        raise ValueError(
            f"momentum_schedule must be 'fixed' or 'cosine', got {hparams['momentum_schedule']!r}"
        )
    if not 0.0 <= float(hparams["momentum"]) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {hparams['momentum']}")


def _momentum(base: float, schedule: str, progress: float) -> float:
    """EMA momentum at ``progress`` in [0, 1]: ``base`` (fixed), or cosine from it to 1."""
    if schedule == "fixed":
        return base
    # BYOL's cosine increase; lightly's cosine_schedule wants integer steps.
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def embedding_std(embeddings: torch.Tensor) -> float:
    """How far a representation is from collapse: the std over the batch of the
    L2-normalised embeddings, averaged over dimensions (SimSiam, section 4.1).

    Args:
        embeddings: (N, D) outputs of an encoder or projection head, N >= 2.

    Returns:
        0 when every sample maps to the same direction (collapse); about ``1 / sqrt(D)``
        when the directions are spread like isotropic Gaussian vectors.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"expected (N >= 2, D) embeddings, got {tuple(embeddings.shape)}")
    z = nn.functional.normalize(embeddings.detach().float(), dim=1)
    return float(z.std(dim=0).mean())


_METHODS: dict[str, type[SSLObjective]] = {
    "moco": MoCo,
    "simclr": SimCLR,
    "swav": SwAV,
    "simsiam": SimSiam,
    "byol": BYOL,
}


def build_ssl(method: str, encoder: nn.Module, **overrides: Any) -> SSLObjective:
    """Wrap ``encoder`` in a self-supervised objective.

    Args:
        method: "moco", "simclr", "swav", "simsiam" or "byol" (case-insensitive).
        encoder: network to pretrain, with a ``feature_dim`` attribute.
        **overrides: hyper-parameters replacing ``SSL_DEFAULTS[method]`` entries.

    Returns:
        The objective; ``objective(view1, view2)`` is the loss.

    Raises:
        ValueError: unknown method or hyper-parameter name.
    """
    key = str(method).lower()
    if key not in _METHODS:
        raise ValueError(f"unknown SSL method {method!r}; choose one of {sorted(_METHODS)}")
    defaults = SSL_DEFAULTS[key]
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown {key} hyper-parameter(s) {sorted(unknown)}; valid: {sorted(defaults)}"
        )
    return _METHODS[key](encoder, {**defaults, **overrides})
