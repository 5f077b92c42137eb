"""RB3D encoder and classifier head (their checkpoint files: ``checkpoints.py``).

RB3D is the 3D residual-block network of Che et al. (2018), "Improved deep
learning-based macromolecules structure classification from electron
cryo-tomograms", Machine Vision and Applications 29:1227-1236, used as the
encoder by Gupta et al. (2022, Fig. 3). The published figure is not in our text
of either paper, so the network is reconstructed from the Fig. 3 caption of
Gupta et al. and the authors' released Keras code (``xulabs/projects``,
``improved_classification/subdivide.py``, function ``Cresnet``); every
assumption is listed in ``docs/model.md``. In short::

    input (N, 1, B, B, B)
    stem:   3x3x3 conv, W filters, ReLU
    pool:   max-pool, kernel 3, stride 2, padding 1          -> ceil(B / 2)
    4 x residual block (spatial size kept):
        shortcut branch: 3x3x3 conv, W/2, ReLU
        bottleneck:      1x1x1 conv, W/2, ReLU -> 3x3x3 conv, W, ReLU -> 1x1x1 conv, W/2
        concatenate the two branches (W channels), ReLU
    [adaptive max-pool to max_grid^3, only when ceil(B / 2) > max_grid]
    flatten -> FC-F, ReLU          (the embedding; F = 1024 for ``rb3d``)
    classifier head: dropout -> FC-L

All arrays are ZYX; the network is isotropic so the axis order only matters to
the augmentation (``augment.py``) and to Grad-CAM, which maps the feature grid
of ``cam_layer`` back onto the input box.

"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from napari_cryossl.io.errors import InputError

__all__ = [
    "PRESETS",
    "Classifier",
    "EncoderPreset",
    "InputError",
    "RB3DEncoder",
    "ResidualConcatBlock",
    "build_encoder",
    "count_flops",
    "count_parameters",
    "for_inference",
]

@dataclass(frozen=True)
class EncoderPreset:
    """Architecture of one RB3D variant.

    Two layouts share the RB3D residual block:

    - ``pooling="flatten"`` (the paper's RB3D, ``rb3d``): stem, one max-pool, ``n_blocks``
      blocks at half the box, the whole feature grid flattened into FC-F. Every voxel
      position has its own FC weights, so the network must see each class in every
      orientation and position to learn it: fine for 9,400 GPU steps, hopeless with a
      few labels.
    - ``pooling="global"`` (``rb3d-small``): an input stage (Gaussian low-pass of
      ``input_sigma`` voxels, soft spherical mask, per-box standardisation, and a
      channel holding each voxel's distance from the box centre), a stem at full
      resolution, then ``stages - 1`` times a stride-2 convolution that doubles the
      width followed by ``n_blocks`` residual blocks, and the mean and max of the last
      feature grid into FC-F. Pooling makes it blind to where in the box a feature is,
      except through the distance channel, which tells the centre particle from its
      neighbours without breaking rotation invariance. The low-pass makes boxes
      resampled by rotation augmentation (trilinear, slightly smoothed) look like the
      raw boxes seen at prediction time.

    Attributes:
        width: filters of the stem (and of each block's 3x3x3 bottleneck conv in the
            first stage; 64 in the paper); the shortcut and 1x1x1 convs use
            ``width // 2`` so that the concatenation has ``width`` channels again.
        fc_dim: size of the fully connected embedding layer (FC-1024 in the paper).
        n_blocks: residual blocks (4 after the pool in the authors' code; per stage
            after each downsampling with global pooling).
        max_grid: largest feature grid fed to the FC layer (flatten layout). The paper's
            32^3 box gives a 16^3 grid; bigger boxes are max-pooled adaptively down to
            this size so the FC layer stays a sane size.
        batch_norm: BatchNorm3d after every convolution. Not in the paper or the
            authors' code.
        block_dropout: dropout on the bottleneck branch before concatenation
            (0.7 in the authors' Keras code, not mentioned in either paper).
        pooling: "flatten" (the paper's) or "global" (mean and max over the grid).
        stages: resolutions of the global layout (3: full, 1/2, 1/4 of the box).
        input_sigma: Gaussian low-pass of the input in voxels (0: none).
        radial_channel: add the distance-from-centre channel and the spherical mask.
        radial_features: also feed FC-F the rotation-invariant radial profiles of the
            input (``RadialProfiles``), beside the pooled convolutional features.
        centring: move each box's particle to the box centre first, by its best match
            among this many spherical references fitted on the training boxes
            (``Centring``; 0: off).
    """

    width: int
    fc_dim: int
    n_blocks: int = 4
    max_grid: int = 16
    batch_norm: bool = False
    block_dropout: float = 0.0
    pooling: str = "flatten"
    stages: int = 1
    input_sigma: float = 0.0
    radial_channel: bool = False
    radial_features: bool = False
    centring: int = 0


#: Architecture fields a checkpoint's ``architecture`` may lack, with the values that
#: rebuild the network such a checkpoint was trained with (see ``_arch_overrides``).
_LEGACY_ARCH = {
    "pooling": "flatten",
    "stages": 1,
    "input_sigma": 0.0,
    "radial_channel": False,
    "radial_features": False,
    "centring": 0,
}

#: Named architectures. ``rb3d`` is the published network (for a GPU, and for
#: reproducing the paper). ``rb3d-small`` is the network chosen by measurement for few
#: labels and small budgets (docs/training.md): RB3D blocks with BatchNorm in three
#: stages, global pooling, and the radial profiles beside the pooled features; ~0.07
#: GFLOP per 16^3 box.
PRESETS: Mapping[str, EncoderPreset] = {
    "rb3d": EncoderPreset(width=64, fc_dim=1024),
    "rb3d-small": EncoderPreset(
        width=16,
        fc_dim=256,
        n_blocks=1,
        batch_norm=True,
        pooling="global",
        stages=3,
        input_sigma=0.5,
        radial_channel=True,
        radial_features=True,
    ),
}


def _conv(in_ch: int, out_ch: int, kernel: int, *, relu: bool, batch_norm: bool) -> nn.Sequential:
    """Stride-1 'same' 3D convolution, optionally followed by BatchNorm and ReLU."""
    layers: list[nn.Module] = [
        nn.Conv3d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualConcatBlock(nn.Module):
    """RB3D residual block: a 3x3x3 shortcut branch and a bottleneck branch, concatenated.

    Unlike a ResNet block the two branches are concatenated along channels
    rather than added (Gupta et al. 2022, Fig. 3: "concatenation of the filters of
    the same dimensions"; the authors' code concatenates a 3x3x3 conv shortcut
    with a 1-3-1 bottleneck). Spatial size is unchanged.

    Args:
        channels: input and output channels (must be even).
        batch_norm: BatchNorm after each convolution.
        dropout: dropout probability on the bottleneck branch.
    """

    def __init__(self, channels: int, *, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if channels % 2:
            raise ValueError(f"ResidualConcatBlock needs an even channel count, got {channels}")
        half = channels // 2
        self.shortcut = _conv(channels, half, 3, relu=True, batch_norm=batch_norm)
        self.bottleneck = nn.Sequential(
            _conv(channels, half, 1, relu=True, batch_norm=batch_norm),
            _conv(half, channels, 3, relu=True, batch_norm=batch_norm),
            _conv(channels, half, 1, relu=False, batch_norm=batch_norm),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N, C, D, H, W)."""
        return self.relu(torch.cat([self.shortcut(x), self.bottleneck(x)], dim=1))


def _fixed_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """A constant the module derives from its box size: not saved in checkpoints.

    Built on the CPU even inside ``torch.device("meta")`` (how checkpoints are rebuilt,
    ``_unweighted_encoder``): loading a state dict fills only saved tensors.
    """
    module.register_buffer(name, value, persistent=False)


def _distance_grid(box: int, centre: float) -> torch.Tensor:
    """(B, B, B) distance of every voxel from ``centre`` (same index on each axis), CPU."""
    g = torch.arange(box, dtype=torch.float32, device="cpu") - centre
    return (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2).sqrt()


def _shell_average_matrix(distance: torch.Tensor, n: int) -> torch.Tensor:
    """(V, n) matrix that averages a flattened (.., V) volume over one-unit shells of
    ``distance`` (the last shell takes everything beyond it)."""
    shell = distance.round().clamp(max=n - 1).long().flatten()
    onehot = torch.zeros(shell.numel(), n, device="cpu")
    onehot[torch.arange(shell.numel(), device="cpu"), shell] = 1.0
    return onehot / onehot.sum(0).clamp_min(1.0)


def _strided(in_ch: int, out_ch: int, *, batch_norm: bool) -> nn.Sequential:
    """3x3x3 convolution with stride 2 (halves the grid), optionally BatchNorm, then ReLU."""
    layers: list[nn.Module] = [
        nn.Conv3d(in_ch, out_ch, 3, stride=2, padding=1, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _GlobalPool(nn.Module):
    """(N, C, G, G, G) -> (N, 2C, 1, 1, 1): mean and max over the grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)
        return pooled[:, :, None, None, None]


class Centring(nn.Module):
    """Moves each box's particle to the box centre: the whole-voxel shift (within B/8)
    with the best correlation against any of K spherical references
    (``nn.centring``).

    Everything after it that is rotation-invariant (the distance channel, the radial
    profiles) is invariant only about the particle's centre, and picks are off by a few
    voxels; centring inside the network does it the same way in training, prediction,
    pretraining and Grad-CAM. The references (radial profiles) are fitted once on the
    training boxes (``fit``) and saved in the checkpoint; until then the module passes
    boxes through. Where the references do not find particles better than in noise
    (``centring.separation`` below ``MIN_SEPARATION``) the fit declines: the profiles stay
    zero, boxes pass through as picked, and ``separation`` says why. ``last_offsets`` keeps
    the offsets of the latest batch (Grad-CAM moves its maps back by them).
    """

    def __init__(self, box_size: int, n_references: int):
        super().__init__()
        from napari_cryossl.nn.centring import shell_index

        self.box_size = int(box_size)
        self.n_references = int(n_references)
        self.max_shift = self.box_size / 8
        n_shells = int(shell_index(self.box_size).max()) + 1
        self.register_buffer("profiles", torch.zeros(self.n_references, n_shells))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._spectra: torch.Tensor | None = None
        self._active = False
        self.last_offsets: torch.Tensor | None = None
        self.separation: float | None = None  # of the last fit (not saved)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @property
    def is_active(self) -> bool:
        """Fitted and not declined: boxes are moved."""
        return self.is_fitted and bool(self.profiles.abs().sum() > 0)

    def fit(self, boxes, *, seed: int = 0) -> torch.Tensor:
        """Fit the references on (N, B, B, B) or (N, 1, B, B, B) boxes; return their
        (N, 3) offsets."""
        from napari_cryossl.nn.centring import MIN_SEPARATION, fit_references, separation

        x = torch.as_tensor(boxes).float().detach().cpu()
        if x.ndim == 5:
            x = x[:, 0]
        refs, offsets = fit_references(x, self.n_references, max_shift=self.max_shift,
                                       seed=seed)
        self.separation = separation(x, refs, max_shift=self.max_shift, seed=seed)
        profiles = torch.zeros_like(self.profiles)
        if self.separation < MIN_SEPARATION:
            offsets = torch.zeros_like(offsets)  # declined: the profiles stay zero
        else:
            profiles[: len(refs)] = refs.to(profiles)
            if len(refs):
                profiles[len(refs):] = refs[-1].to(profiles)  # unused slots repeat one
        self.profiles.copy_(profiles)
        self.fitted.fill_(True)
        self._spectra = None
        return offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> the same boxes, each moved by minus its particle's offset."""
        from napari_cryossl.nn.centring import find_offsets, reference_spectra, roll_boxes

        if self._spectra is None or self._spectra.device != x.device:
            self._active = self.is_active  # once per device: no sync in every batch
            self._spectra = reference_spectra(self.profiles.to(x.device), self.box_size,
                                              0.4 * self.box_size)
        if not self._active:
            self.last_offsets = None
            return x
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            offsets, _ = find_offsets(x[:, 0].detach().float(), self._spectra, self.max_shift)
        self.last_offsets = offsets
        moved = roll_boxes(x[:, 0], -offsets)[:, None]
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            moved = moved.contiguous(memory_format=torch.channels_last_3d)  # as it came
        return moved

    def _apply(self, fn, recurse=True):
        self._spectra = None  # rebuilt on the new device / dtype at the next call
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._spectra = None  # new profiles: rebuilt at the next call
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"references={self.n_references}, max_shift={self.max_shift:g}"


def centring_of(model: nn.Module) -> Centring | None:
    """The ``Centring`` inside a network (encoder, classifier, SSL objective), if any."""
    return next((m for m in model.modules() if isinstance(m, Centring)), None)


class InputStage(nn.Module):
    """Fixed (weight-free) preprocessing of the global-pooling layout.

    With ``centring`` > 0, first ``Centring`` (each particle moved to the box centre).
    Gaussian low-pass (``sigma`` voxels, separable, zero padding), then with
    ``radial=True`` a soft spherical mask (cosine edge over the outer 2 voxels of the
    inscribed sphere) and per-box standardisation, and a second channel holding every
    voxel's distance from the box centre divided by B/2. Everything here commutes
    with rotations about the box centre, so a rotated particle is seen the same way.
    """

    def __init__(self, box_size: int, sigma: float, radial: bool, centring: int = 0):
        super().__init__()
        self.centring = Centring(box_size, centring) if centring > 0 else None
        self.sigma = float(sigma)
        self.radial = bool(radial)
        self.channels = 2 if radial else 1
        b = int(box_size)
        r = _distance_grid(b, (b - 1) / 2)
        edge = ((r - (b / 2 - 2)) / 2).clamp(0, 1)
        _fixed_buffer(self, "mask", 0.5 * (1 + torch.cos(math.pi * edge)))
        _fixed_buffer(self, "radius", r / (b / 2))
        _fixed_buffer(self, "blur", _gaussian_blur_matrix(b, self.sigma))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, 1, B, B, B): the first channel of ``forward``."""
        if self.centring is not None:
            x = self.centring(x)
        if self.sigma > 0:
            x = _blur_3d(x, self.blur.to(x.dtype))
        if not self.radial:
            return x
        x = x * self.mask.to(x.dtype)
        return (x - x.mean(dim=(2, 3, 4), keepdim=True)) / (
            x.std(dim=(2, 3, 4), keepdim=True) + 1e-6
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, channels, B, B, B)."""
        x = self.density(x)
        if not self.radial:
            return x
        radius = self.radius.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, radius], dim=1)


def _gaussian_blur_matrix(box: int, sigma: float) -> torch.Tensor:
    """(B, B) matrix M with ``M @ v`` = v convolved with a Gaussian of ``sigma`` voxels
    (cut at 2.5 σ, normalised, zero padding), CPU. Identity for ``sigma`` 0.

    A banded matrix product is the same arithmetic as a 1D convolution, but one large
    matrix multiply per axis runs at BLAS speed where a one-channel ``conv3d`` does not
    (it took a quarter of rb3d-small's inference time)."""
    if sigma <= 0:
        return torch.eye(box, device="cpu")
    half = max(int(math.ceil(2.5 * sigma)), 1)
    k = torch.arange(-half, half + 1, dtype=torch.float32, device="cpu")
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel = kernel / kernel.sum()
    i = torch.arange(box, device="cpu")
    offset = i[None, :] - i[:, None] + half  # M[i, j] = kernel[j - i + half]
    inside = (offset >= 0) & (offset < len(kernel))
    zero = torch.zeros((), device="cpu")
    return torch.where(inside, kernel[offset.clamp(0, len(kernel) - 1)], zero)


def _blur_3d(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Separable blur of (N, C, B, B, B) boxes along z, y and x with the (B, B) matrix m."""
    n, c, b = x.shape[0], x.shape[1], x.shape[2]
    x = x @ m.T  # along x
    x = m @ x  # along y (matmul over the last two axes)
    return (m @ x.reshape(n * c, b, b * b)).reshape(n, c, b, b, b)  # along z

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, radial={self.radial}"


class RadialProfiles(nn.Module):
    """Rotation-invariant descriptors of a box: the floor's features, inside the network.

    Per box: mean and mean-square density in one-voxel spherical shells about the box
    centre, and the log of the mean power in shells of spatial frequency, normalised by
    a BatchNorm1d. Unchanged by rotating the particle about the centre, so a classifier
    that sees them needs no labels to learn that invariance; the convolutional features
    beside them add what shells cannot see (how density is arranged within a shell).
    ``baselines.radial_features`` computes the same kind of profiles for the floor.
    """

    def __init__(self, box_size: int):
        super().__init__()
        b = int(box_size)
        n = b // 2 + 1
        # voxel shells about the centre voxel B//2; frequency shells about the zero
        # frequency of the unshifted FFT (fftfreq order)
        freq = torch.fft.fftfreq(b, device="cpu") * b
        k = (freq[:, None, None] ** 2 + freq[None, :, None] ** 2 + freq[None, None, :] ** 2).sqrt()
        _fixed_buffer(self, "shells", _shell_average_matrix(_distance_grid(b, b // 2), n))
        _fixed_buffer(self, "kshells", _shell_average_matrix(k, n))
        self.n_features = 3 * n
        self.norm = nn.BatchNorm1d(self.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, 3 (B/2 + 1)) normalised profiles."""
        flat = x.float().flatten(1)
        power = torch.fft.fftn(x.float()[:, 0], dim=(1, 2, 3)).abs().square().flatten(1)
        feats = torch.cat(
            [flat @ self.shells, flat.square() @ self.shells, torch.log1p(power @ self.kshells)],
            dim=1,
        )
        return self.norm(feats.to(x.dtype))


class RB3DEncoder(nn.Module):
    """RB3D up to and including FC-F + ReLU: subtomograms -> embeddings.

    Args:
        preset: name of the preset (kept for checkpoints and messages).
        box_size: edge length B of the cubic input boxes, in voxels. The FC
            layer's input size depends on it, so one encoder serves one box size.
        arch: the architecture.

    Attributes:
        feature_dim: embedding size F.
        preset, box_size, arch: as given.
        grid_size: edge of the feature grid flattened into the FC layer.
        cam_layer: module name (relative to this encoder) of the last residual
            block, whose output feature maps Grad-CAM uses.
    """

    def __init__(self, preset: str, box_size: int, arch: EncoderPreset):
        super().__init__()
        self.preset = preset
        self.box_size = int(box_size)
        self.arch = arch
        self.feature_dim = arch.fc_dim
        w = arch.width
        bn = arch.batch_norm
        if arch.pooling == "global":
            self.input = InputStage(
                self.box_size, arch.input_sigma, arch.radial_channel, arch.centring
            )
            self.stem = _conv(self.input.channels, w, 3, relu=True, batch_norm=bn)
            self.pool = nn.Identity()
            layers: list[nn.Module] = []
            cam = -1
            for stage in range(1, arch.stages):
                c_in, c_out = w * 2 ** (stage - 1), w * 2**stage
                layers.append(_strided(c_in, c_out, batch_norm=bn))
                for _ in range(arch.n_blocks):
                    layers.append(
                        ResidualConcatBlock(c_out, batch_norm=bn, dropout=arch.block_dropout)
                    )
                if stage == max(arch.stages - 2, 1):
                    # Grad-CAM on the last block one stage before the end: a grid of B/2
                    # (16^3 boxes: 8^3 instead of the last stage's 4^3) shows where the
                    # network looked at a resolution a user can read.
                    cam = len(layers) - 1
            self.blocks = nn.Sequential(*layers)
            self.reduce = _GlobalPool()
            self.grid_size = 1
            channels = w * 2 ** max(arch.stages - 1, 0)
            self.profiles = RadialProfiles(self.box_size) if arch.radial_features else None
            extra = self.profiles.n_features if self.profiles is not None else 0
            self.fc = nn.Linear(2 * channels + extra, arch.fc_dim)
            self.cam_layer = f"blocks.{cam}" if layers else "stem"
        elif arch.pooling == "flatten":
            self.profiles = None
            self.input = nn.Identity()
            self.stem = _conv(1, w, 3, relu=True, batch_norm=bn)
            # Gupta et al. Fig. 3 caption: max-pooling "with kernel size 3x3x3 and stride of 2".
            self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
            self.blocks = nn.Sequential(
                *(
                    ResidualConcatBlock(w, batch_norm=bn, dropout=arch.block_dropout)
                    for _ in range(arch.n_blocks)
                )
            )
            pooled = (self.box_size - 1) // 2 + 1  # output size of the k3/s2/p1 pool
            if pooled > arch.max_grid:
                self.reduce = nn.AdaptiveMaxPool3d(arch.max_grid)
                self.grid_size = arch.max_grid
            else:
                self.reduce = nn.Identity()
                self.grid_size = pooled
            self.fc = nn.Linear(w * self.grid_size**3, arch.fc_dim)
            self.cam_layer = f"blocks.{arch.n_blocks - 1}" if arch.n_blocks else "stem"
        else:
            raise ValueError(f"unknown pooling {arch.pooling!r}; choose 'flatten' or 'global'")
        self.fc_relu = nn.ReLU(inplace=True)
        if not self.fc.weight.is_meta:  # meta tensors hold no values to initialise
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) normal weights and zero biases for every convolution and the FC layer.

        PyTorch's default layer initialisation (uniform, gain 1/sqrt(3)) shrinks the
        signal by ~6x in variance per ReLU layer; RB3D has no BatchNorm, so after its 14
        layers the embeddings of different subtomograms differ by ~0.1 % and SGD at the
        paper's fine-tuning rate (5e-4) does not move. He-normal weights (fan-in, ReLU
        gain) keep the activations' scale through the network. (Keras, which the
        authors used, defaults to Glorot-uniform, which also keeps the scale far better
        than PyTorch's default.)
        """
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d):
                module.reset_parameters()

    def _check_input(self, x: torch.Tensor) -> None:
        b = self.box_size
        if x.ndim != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != (b, b, b):
            raise ValueError(
                f"{self.preset} encoder built for boxes of {b}^3 voxels expects input of shape "
                f"(N, 1, {b}, {b}, {b}), got {tuple(x.shape)}"
            )

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's output and the density channel the radial profiles read.

        The distance channel of the input stage is the same for every box, so without
        gradients its part of the stem's convolution is computed once per call on one box
        and broadcast, instead of convolving a two-channel batch (the same sum, in half
        the time)."""
        split = isinstance(self.input, InputStage) and self.input.radial
        if not split or (torch.is_grad_enabled() and self.stem[0].weight.requires_grad):
            # training: one two-channel convolution (the split's broadcast sum costs more
            # in the backward pass than it saves in the forward one)
            inp = self.input(x)
            return self.stem(inp), inp[:, :1]
        density = self.input.density(x)
        conv = self.stem[0]
        radius = self.input.radius.to(density.dtype)[None, None]
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            radius = radius.contiguous(memory_format=torch.channels_last_3d)
        h = F.conv3d(density, conv.weight[:, :1], None, conv.stride, conv.padding) + F.conv3d(
            radius, conv.weight[:, 1:], conv.bias, conv.stride, conv.padding
        )
        return self.stem[1:](h), density

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """The max-pool of the flatten layout, in the feature maps' own precision: CPU
        autocast would copy a bfloat16 batch to float32 for it (the largest feature map;
        a tenth of rb3d's inference time), and a maximum is exact in any precision."""
        if isinstance(self.pool, nn.Identity):
            return h
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.pool(h)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block: (N, width, G', G', G'), G' = ceil(B/2) for ``rb3d``."""
        self._check_input(x)
        return self.blocks(self._pool(self._stem_forward(x)[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) float -> (N, feature_dim) embedding (after ReLU)."""
        self._check_input(x)
        h, density = self._stem_forward(x)
        h = torch.flatten(self.reduce(self.blocks(self._pool(h))), 1)
        if self.profiles is not None:
            h = torch.cat([h, self.profiles(density)], dim=1)
        return self.fc_relu(self.fc(h))

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, box_size={self.box_size}, feature_dim={self.feature_dim}"


def build_encoder(preset: str = "rb3d", box_size: int = 32, **overrides: Any) -> RB3DEncoder:
    """Build an RB3D encoder for cubic boxes of ``box_size`` voxels.

    Args:
        preset: a key of ``PRESETS`` (``"rb3d"`` paper size, ``"rb3d-small"`` for CPUs).
        box_size: box edge in voxels (28 and 32 in the paper; any size >= 8 works).
        **overrides: ``EncoderPreset`` fields to change, e.g. ``batch_norm=True``.

    Returns:
        The encoder; forward (N, 1, B, B, B) -> (N, feature_dim).

    Raises:
        ValueError: unknown preset or override, or a box that is too small.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    valid = {f.name for f in fields(EncoderPreset)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown encoder option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    box_size = int(box_size)
    if box_size < 8:
        raise ValueError(f"box size must be at least 8 voxels, got {box_size}")
    arch = replace(PRESETS[preset], **overrides)
    if arch.width < 2 or arch.width % 2 or arch.fc_dim < 1 or arch.n_blocks < 0:
        raise ValueError(f"invalid architecture {arch}")
    return RB3DEncoder(preset, box_size, arch)


class Classifier(nn.Module):
    """Encoder + FC-L head, producing class logits.

    The head's output index i corresponds to the i-th entry of the sorted
    class-number list stored in the checkpoint (see ``checkpoint_state``);
    mapping back to 1-based class numbers is the caller's job.

    Args:
        encoder: an ``RB3DEncoder`` (pretrained or fresh).
        n_classes: number of output classes L (>= 2).
        dropout: dropout before FC-L (0.5 as in the authors' Keras code).
    """

    def __init__(self, encoder: RB3DEncoder, n_classes: int, *, dropout: float = 0.5):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.encoder = encoder
        self.n_classes = int(n_classes)
        self.dropout = float(dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.feature_dim, n_classes))

    @property
    def cam_layer(self) -> str:
        """Module name (relative to this classifier) of the Grad-CAM layer."""
        return f"encoder.{self.encoder.cam_layer}"

    @property
    def preset(self) -> str:
        return self.encoder.preset

    @property
    def box_size(self) -> int:
        return self.encoder.box_size

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, feature_dim) embedding."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, B, B, B) -> (N, n_classes) logits (no softmax)."""
        return self.head(self.encoder(x))


# --------------------------------------------------------------------------- cost


def for_inference(model: nn.Module, autocast_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` for prediction: eval mode, every Conv3d + BatchNorm3d pair fused
    into one convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``: the same outputs,
    one pass over the feature maps fewer), and no gradients. The model given is unchanged,
    so training can go on with it.

    ``autocast_dtype``: the dtype the caller will autocast to (``devices.amp_dtype``). The
    fully connected layers' weights are stored in it once, instead of autocast converting
    them at every call: rb3d's 268 M-weight layer is read at half the bytes. The model must
    then run under that autocast.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    if autocast_dtype is not None:
        for module in fused.modules():
            if isinstance(module, nn.Linear):
                module.to(autocast_dtype)
    return fused.requires_grad_(False)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, box_size: int | None = None) -> int:
    """Floating-point operations of one forward pass, per subtomogram.

    Counts 2 x multiply-adds of every ``Conv3d`` and ``Linear`` layer (the
    convention of most papers), measured with forward hooks on a dummy batch of
    one box; pooling, activations and BatchNorm are ignored (<1 %). The count is the
    network's as defined; inference without gradients skips part of rb3d-small's stem
    (``RB3DEncoder._stem_forward``), so it executes a little less.

    Args:
        model: an encoder, classifier or any module taking (N, 1, B, B, B).
        box_size: box edge; defaults to ``model.box_size``.

    Returns:
        FLOPs per subtomogram (int).
    """
    if box_size is None:
        box_size = getattr(model, "box_size", None)
        if box_size is None:
            raise ValueError("count_flops needs box_size for a model without a box_size attribute")
    total = 0

    def conv_hook(mod: nn.Conv3d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        per_output = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        total += 2 * per_output * out[0].numel()

    def linear_hook(mod: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * mod.in_features * mod.out_features * (out[0].numel() // mod.out_features)

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv3d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        model.eval()
        # with gradients enabled: the network as defined (rb3d-small's two-channel stem),
        # not the shortcut inference takes
        with torch.enable_grad():
            model(torch.zeros(1, 1, box_size, box_size, box_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total

