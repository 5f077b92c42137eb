"""Pick by example: a small 3D U-Net learns where the labelled particles' centres are.

Training (`iter_train_picker`) takes one or more (tomogram, particle table) pairs. Every
labelled particle (``class_number > 0``) becomes a Gaussian blob (σ = radius / 3) at its
centre in the output channel of its class; the network (MONAI's ``UNet``, one sigmoid
output per class) is fitted to these heatmaps with a weighted binary cross-entropy
(voxels near a centre weigh more: they are few). Patches are cut around labelled
particles (shifted at random) and at random places farther than one diameter from every
pick (weak negatives: what nobody labelled counts as background there). Unlabelled picks
(``class_number == 0``) are masked out to one diameter around them: they may be
particles of a class, so the loss ignores them. Augmentation: the 16 symmetries of the
cube that keep the z axis (90° rotations in the YX plane and flips of every axis), so the
missing wedge, along z, stays where it is in a tomogram. The number of steps is a
setting of its own: a handful of clicks trains as long as hundreds.

Picking (`iter_pick_with_model`) runs the network over the whole tomogram in overlapping
chunks read block by block (memory-mapped MRC or OME-Zarr, as `picking.py` does), keeps
the local maxima of each class's heatmap above a threshold, and keeps the best of picks
closer than a minimum distance whatever their class (`picking._greedy_min_distance`).

When the diameter is not given, `estimate_diameter` measures it on the labelled
particles: the radial profile of their average box, from its centre out to where the
mean density has returned to the background.

The checkpoint (``torch.save``, read back with ``weights_only=True``) holds the weights
and what picking needs: the diameter in voxels, class numbers and names, voxel size,
patch size, channels and the normalisation (each tomogram to median 0, robust σ 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from napari_cryossl.io import InputError, make_particle_table
from napari_cryossl.particles.annotations import JUNK_CLASS_NAME
from napari_cryossl.particles.extract import _MappedPages, _volume_and_name
from napari_cryossl.particles.picking import _greedy_min_distance, _read_block

__all__ = [
    "PICKER_FORMAT",
    "PickerConfig",
    "estimate_diameter",
    "iter_pick_with_model",
    "iter_train_picker",
    "load_picker",
    "picker_metadata",
]

#: Tag of a picker checkpoint.
PICKER_FORMAT = "napari-cryossl-picker"
#: Default probability a heatmap peak must reach to be a pick (0.2 scored a little higher
#: F-beta 4 than 0.3 on the tuning tomograms of docs/benchmarks.md, for more picks).
DEFAULT_THRESHOLD = 0.2
#: Default test-time augmentation: four quarter turns in YX (+0.01-0.02 F-beta 4 and
#: +5-7 points of precision on the tuning tomograms, for 2.4 times the time of one view).
DEFAULT_TTA = 4
#: Default minimum distance between picks, as a fraction of the diameter.
MIN_DISTANCE_FRACTION = 0.7
_MAD_TO_SIGMA = 1.4826
#: Added to the network's logits: every voxel starts as background (p ≈ 0.02), so the
#: first steps do not spend themselves unlearning a heatmap that is 0.5 everywhere.
LOGIT_OFFSET = -4.0


@dataclass
class PickerConfig:
    """Training settings of the learned picker.

    The defaults were chosen on cluttered simulated tomograms at SNR 0.1 (five complexes,
    25 clicks each, scored on tomograms the picker never saw; docs/benchmarks.md): 3,000
    steps of a 16-32-64 U-Net take about 5 minutes on one CPU thread; 300 steps or 8-16-32
    channels found the large complexes but not the small ones.
    """

    steps: int = 3000
    patch_size: int = 32
    batch_size: int = 4
    learning_rate: float = 3e-3
    channels: tuple[int, ...] = (16, 32, 64)
    positive_fraction: float = 0.7
    positive_weight: float = 5.0
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        problems = []
        if int(self.steps) != self.steps or self.steps < 1:
            problems.append(f"steps must be a positive integer, got {self.steps}")
        depth = 2 ** (len(self.channels) - 1)
        if self.patch_size < 8 or self.patch_size % depth:
            problems.append(f"patch_size must be >= 8 and a multiple of {depth}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.positive_fraction <= 1:
            problems.append("positive_fraction must be in [0, 1]")
        if problems:
            raise InputError("picker training: " + "; ".join(problems))


def _network(n_classes: int, channels):
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=int(n_classes),
        channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
    )


def _normalisation(data, name: str) -> tuple[float, float]:
    """Median and robust σ of a tomogram from a strided subsample (~1M voxels)."""
    shape = data.shape
    step = max(1, math.ceil((math.prod(shape) / 1_000_000) ** (1 / 3)))
    values = np.asarray(data[::step, ::step, ::step], dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        raise InputError(f"{name}: no finite voxel")
    median = float(np.median(values))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    if not sigma > 0:
        sigma = float(np.std(values)) or 1.0
    return median, sigma


def _patch(data, corner, size: int, norm) -> np.ndarray:
    """A cube of `size` at `corner` (may reach outside: zeros there, after normalising)."""
    out = np.zeros((size,) * 3, dtype=np.float32)
    src, dst = [], []
    for c, n in zip(corner, data.shape, strict=True):
        a, b = max(c, 0), min(c + size, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - c, a - c + max(b - a, 0)))
    block = np.asarray(data[tuple(src)], dtype=np.float32)
    out[tuple(dst)] = (block - norm[0]) / norm[1]
    return out


def _targets(corner, size, zyx, classes, n_classes, sigma, diameter, unlabelled):
    """Heatmaps (n_classes, P, P, P) and the loss mask (P, P, P) of a patch."""
    grid = [np.arange(c, c + size, dtype=np.float32) for c in corner]
    heat = np.zeros((n_classes, size, size, size), dtype=np.float32)
    reach = 4 * sigma
    for (z, y, x), k in zip(zyx, classes, strict=True):
        if not all(c - reach <= v < c + size + reach for v, c in zip((z, y, x), corner, strict=True)):
            continue
        gz, gy, gx = (np.exp(-((g - v) ** 2) / (2 * sigma**2)) for g, v in zip(grid, (z, y, x), strict=True))
        blob = gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
        np.maximum(heat[k], blob, out=heat[k])
    mask = np.ones((size,) * 3, dtype=np.float32)
    for z, y, x in unlabelled:
        if not all(c - diameter <= v < c + size + diameter for v, c in zip((z, y, x), corner, strict=True)):
            continue
        d2 = (
            (grid[0][:, None, None] - z) ** 2
            + (grid[1][None, :, None] - y) ** 2
            + (grid[2][None, None, :] - x) ** 2
        )
        mask[d2 <= diameter**2] = 0.0
    return heat, mask


def _augment(rng, *arrays):
    """The same random symmetry of the cube that keeps z (rot90 in YX, flips) on each."""
    k = int(rng.integers(4))
    flips = [ax for ax in range(3) if rng.random() < 0.5]
    out = []
    for a in arrays:
        lead = a.ndim - 3
        a = np.rot90(a, k, axes=(lead + 1, lead + 2))
        for ax in flips:
            a = np.flip(a, axis=lead + ax)
        out.append(np.ascontiguousarray(a))
    return out


def estimate_diameter(pairs, *, box: int | None = None) -> float:
    """The particle diameter in voxels, from the labelled particles' average box.

    Each tomogram is normalised (median 0, robust σ 1); boxes around every particle of
    the tables (labelled or not) are averaged; the radial profile of the average is
    compared to the background (the profile's median over the outer half of the box):
    from its outermost strong deviation (dark or bright, at least 30 % of the largest,
    within the inner half) outwards, the
    radius is where it first returns to the background (linear interpolation between
    shells), and the diameter is twice that. Measured on simulated crowded tomograms
    (CTF, missing wedge; SNR 0.3-1; 8, 12 and 16 voxel particles) within 5-15 %.
    """
    total = None
    count = 0
    for volume, table in pairs:
        data, name = _volume_and_name(volume)
        if box is None:
            box = int(min(64, *data.shape))
        norm = _normalisation(data, name)
        zyx = table[["z", "y", "x"]].to_numpy(dtype=np.float64)
        for c in np.rint(zyx).astype(int):
            patch = _patch(data, c - box // 2, box, norm)
            total = patch if total is None else total + patch
            count += 1
    if not count:
        raise InputError("diameter estimate: no particles")
    mean = total / count
    centre = box // 2
    g = np.arange(box) - centre
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    rbin = np.rint(r).astype(int)
    n_r = box // 2
    profile = np.array([mean[rbin == i].mean() for i in range(n_r)])
    deviation = profile - float(np.median(profile[n_r // 2 :]))
    inner = np.abs(deviation[: max(n_r // 2, 1)])
    # the outermost strong deviation: a particle may have a bright core in a dark shell
    peak = int(np.flatnonzero(inner >= 0.3 * inner.max())[-1])
    sign = np.sign(deviation[peak]) or 1.0
    back = np.flatnonzero(sign * deviation[peak:] <= 0)
    if not len(back):
        raise InputError("diameter estimate: the particles' average never returns to background")
    r1 = peak + int(back[0])
    before, after = sign * deviation[r1 - 1], sign * deviation[r1]
    radius = r1 - 1 + before / (before - after) if before != after else float(r1)
    return 2.0 * radius


def iter_train_picker(
    pairs,
    *,
    diameter_px: float | None = None,
    classes=None,
    config: PickerConfig | None = None,
    out,
    voxel_size: float | None = None,
    init=None,
):
    """Train a picker on labelled particle centres; yield `Progress`, return its path.

    Args:
        pairs: (tomogram, particle table) pairs; a tomogram is an array, a memmap or a
            `Tomogram`; tables in voxels (ZYX columns z, y, x), ``class_number`` > 0
            labelled, 0 unlabelled (masked out, not background).
        diameter_px: particle diameter in voxels; None estimates it
            (`estimate_diameter`).
        classes: {class number: name} of the classes to learn; default every labelled
            class number, named by its number.
        config: `PickerConfig`.
        out: checkpoint file to write (atomically).
        voxel_size: Å per voxel, stored (default: the first `Tomogram`'s).
        init: a picker checkpoint to continue from (the next round of "find more like
            these"): its weights where the shapes agree (a new class gets a fresh output
            channel), its diameter when ``diameter_px`` is None, and its class names.
    """
    import torch

    from napari_cryossl.base.status import Progress
    from napari_cryossl.io.atomic import atomic_write

    t0 = time.perf_counter()
    config = config or PickerConfig()
    config.check()
    pairs = list(pairs)
    if not pairs:
        raise InputError("picker training: no (tomogram, particles) pair")
    if voxel_size is None:
        voxel_size = next((float(v.voxel_size) for v, _ in pairs if hasattr(v, "voxel_size")), None)
    labelled = pd.concat([t[t["class_number"] > 0] for _, t in pairs])
    if len(labelled) == 0:
        raise InputError("picker training: no labelled particle (class_number > 0)")
    start = None
    if init is not None:
        start = _read_picker_state(init)
        if diameter_px is None:
            diameter_px = float(start["diameter_px"])
    if classes is None:
        classes = {int(k): str(int(k)) for k in sorted(labelled["class_number"].unique())}
        if start is not None:
            known = dict(zip(start["class_numbers"], start["class_names"], strict=True))
            classes = {k: known.get(k, v) for k, v in classes.items()}
    classes = {int(k): str(v) for k, v in dict(classes).items()}
    numbers = sorted(classes)
    index = {k: i for i, k in enumerate(numbers)}
    if diameter_px is None:
        diameter_px = estimate_diameter([(v, t[t["class_number"] > 0]) for v, t in pairs])
    diameter_px = float(diameter_px)
    if not (math.isfinite(diameter_px) and diameter_px > 0):
        raise InputError(f"picker training: the diameter must be positive, got {diameter_px}")
    sigma = diameter_px / 6.0

    tomos = []
    for volume, table in pairs:
        data, name = _volume_and_name(volume)
        if data.ndim != 3:
            raise InputError(f"{name}: a tomogram must be 3D, got shape {data.shape}")
        zyx = table[["z", "y", "x"]].to_numpy(dtype=np.float64)
        cls = table["class_number"].to_numpy()
        known = np.isin(cls, numbers)
        tomos.append(
            dict(
                data=data,
                norm=_normalisation(data, name),
                all=zyx,
                zyx=zyx[known],
                cls=np.array([index[int(k)] for k in cls[known]], dtype=int),
                unlabelled=zyx[~known],
            )
        )
    positives = [(i, j) for i, t in enumerate(tomos) for j in range(len(t["zyx"]))]
    if not positives:
        raise InputError(f"picker training: no particle of the classes {numbers}")

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    from napari_cryossl.nn.devices import select_device

    device = select_device(config.device)
    channels = tuple(start["channels"]) if start is not None else config.channels
    net = _network(len(numbers), channels)
    if start is not None:
        _load_matching(net, start, numbers)
    net = net.to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=int(config.steps), pct_start=0.1
    )
    size = int(config.patch_size)

    def sample():
        if rng.random() < config.positive_fraction:
            i, j = positives[int(rng.integers(len(positives)))]
            t = tomos[i]
            centre = t["zyx"][j] + rng.uniform(-size / 4, size / 4, 3)
        else:
            i = int(rng.integers(len(tomos)))
            t = tomos[i]
            shape = np.array(t["data"].shape)
            for _ in range(20):
                centre = rng.uniform(0, shape)
                if not len(t["all"]) or np.min(np.linalg.norm(t["all"] - centre, axis=1)) > diameter_px:
                    break
        corner = np.rint(centre).astype(int) - size // 2
        image = _patch(t["data"], corner, size, t["norm"])
        heat, mask = _targets(
            corner, size, t["zyx"], t["cls"], len(numbers), sigma, diameter_px, t["unlabelled"]
        )
        return _augment(rng, image[None], heat, mask[None])

    net.train()
    for step in range(1, int(config.steps) + 1):
        batch = [sample() for _ in range(config.batch_size)]
        x, y, m = (torch.from_numpy(np.stack(b)).to(device) for b in zip(*batch, strict=True))
        logits = net(x) + LOGIT_OFFSET
        weight = m * (1.0 + config.positive_weight * y)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, weight=weight, reduction="sum"
        ) / weight.sum().clamp_min(1.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        yield Progress(
            stage="train picker", step=step, n_steps=int(config.steps), loss=float(loss.detach()),
            elapsed_s=time.perf_counter() - t0, unit="step",
        )

    state = {
        "format": PICKER_FORMAT,
        "version": 1,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "diameter_px": diameter_px,
        "class_numbers": numbers,
        "class_names": [classes[k] for k in numbers],
        "voxel_size": float(voxel_size) if voxel_size is not None else None,
        "patch_size": size,
        "channels": [int(c) for c in channels],
        "normalisation": "median 0, robust sigma 1 (1.4826 MAD) per tomogram",
        "sigma_px": sigma,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        torch.save(state, tmp)
    yield Progress(
        stage="train picker", step=int(config.steps), n_steps=int(config.steps),
        loss=float(loss.detach()), elapsed_s=time.perf_counter() - t0, done=True, checkpoint=out,
        event="done",
    )
    return out


def _read_picker_state(path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such picker checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch's message is pages long
        raise InputError(
            f"{path}: not a picker checkpoint, or a damaged one ({type(exc).__name__}); "
            "cryossl train-picker writes one"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != PICKER_FORMAT:
        raise InputError(f"{path}: not a picker checkpoint (cryossl train-picker writes one)")
    return state


def _load_matching(net, state: dict, numbers: list[int]) -> None:
    """Copy a checkpoint's weights into `net`. The same classes: every weight. Other
    classes: every weight but the output block's, and of that the parts of the classes
    both know (a new class starts from a fresh channel, a dropped one is left out)."""
    import itertools

    own = net.state_dict()
    saved = state["state_dict"]
    before = [int(k) for k in state["class_numbers"]]
    if before == list(numbers):
        net.load_state_dict(saved)
        return
    last = max(int(name.split(".")[1]) for name in own)
    old = {k: i for i, k in enumerate(before)}
    shared = [(i, old[k]) for i, k in enumerate(numbers) if k in old]
    for name, value in saved.items():
        if name not in own:
            continue
        target = own[name]
        if not name.startswith(f"model.{last}."):
            if target.shape == value.shape:
                own[name] = value.clone()
            continue
        axes = [
            a for a in range(target.ndim)
            if target.shape[a] == len(numbers) and value.shape[a] == len(before)
        ]
        if [d for a, d in enumerate(target.shape) if a not in axes] != [
            d for a, d in enumerate(value.shape) if a not in axes
        ]:
            continue
        if not axes:
            own[name] = value.clone()
            continue
        if len(axes) == 2:
            # a known class's output must not hear a new class's fresh channel
            fresh = [i for i, k in enumerate(numbers) if k not in old]
            for (i, _), j in itertools.product(shared, fresh):
                target[(slice(None),) * axes[0] + (i,) + (slice(None),) * (axes[1] - axes[0] - 1) + (j,)] = 0
        for combo in itertools.product(shared, repeat=len(axes)):
            dst = [slice(None)] * target.ndim
            src = [slice(None)] * target.ndim
            for axis, (i, j) in zip(axes, combo, strict=True):
                dst[axis], src[axis] = i, j
            target[tuple(dst)] = value[tuple(src)]
    net.load_state_dict(own)


#: The views test-time augmentation averages: (quarter turns in YX, flip along x). Each
#: keeps the z axis, and so the missing wedge, where it is.
_VIEWS = [(k, flip) for flip in (False, True) for k in range(4)]


def _heatmap(net, x, tta: int = 1):
    """Class probabilities (1, C, Z, Y, X) of a block, averaged over `tta` views.

    The chunk's Y and X extents may differ: a quarter turn swaps them, and the network
    (strided convolutions) takes any extent that is a multiple of its stride.
    """
    import torch

    total = None
    for k, flip in _VIEWS[: int(tta)]:
        view = torch.flip(x, dims=(-1,)) if flip else x
        view = torch.rot90(view, k, dims=(-2, -1))
        heat = torch.sigmoid(net(view) + LOGIT_OFFSET)
        heat = torch.rot90(heat, -k, dims=(-2, -1))
        heat = torch.flip(heat, dims=(-1,)) if flip else heat
        total = heat if total is None else total + heat
    return total / int(tta)


def picker_metadata(path) -> dict:
    """What a picker checkpoint says of itself (classes, diameter, voxel size...), without
    building its network."""
    return {k: v for k, v in _read_picker_state(path).items() if k != "state_dict"}


def load_picker(path):
    """A picker checkpoint: (network in eval mode, its metadata)."""
    state = _read_picker_state(path)
    net = _network(len(state["class_numbers"]), state["channels"])
    net.load_state_dict(state["state_dict"])
    net.eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return net, meta


def iter_pick_with_model(
    volume,
    picker_path,
    *,
    threshold: float | None = None,
    min_distance_px: float | None = None,
    chunk_size: int = 64,
    max_particles: int | None = None,
    heatmap: np.ndarray | None = None,
    keep_junk: bool = False,
    device: str = "auto",
    tta: int | None = None,
):
    """Pick particles with a trained picker; yield `Progress` per chunk, return the table.

    Args:
        volume: ZYX tomogram (array, memmap or `Tomogram`), read chunk by chunk.
        picker_path: checkpoint written by `iter_train_picker`.
        threshold: lowest heatmap peak (probability, 0..1) kept; default `DEFAULT_THRESHOLD`.
        min_distance_px: minimum distance between picks of any class; default 0.7 × the
            checkpoint's diameter.
        chunk_size: edge of the chunks, voxels (a multiple of the network's stride).
        max_particles: keep at most this many (the best scores).
        heatmap: an array of the tomogram's shape to fill with the picker's heatmap (the
            highest probability of a particle class at each voxel), to show it.
        keep_junk: keep the picks of a class named `JUNK_CLASS_NAME` ("not a particle",
            what the user rejected); by default they only suppress particle picks closer
            than the minimum distance and are then dropped.
        device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".
        tta: average the heatmaps of this many symmetric views of each chunk (1-8: the
            identity, the 90°, 180°, 270° turns in the YX plane, then the same flipped
            along x), that many times the time; default `DEFAULT_TTA`.

    Returns:
        Particle table: x, y, z in voxels, ``class_number`` (the checkpoint's class
        numbers), ``score`` (the heatmap's peak value), source "auto"; best first. Its
        ``attrs`` hold ``diameter_px`` and ``class_names``.
    """
    import torch

    from napari_cryossl.base.status import Progress

    t0 = time.perf_counter()
    data, name = _volume_and_name(volume)
    if data.ndim != 3:
        raise InputError(f"{name}: a tomogram must be 3D, got shape {data.shape}")
    from napari_cryossl.nn.devices import select_device

    tta = DEFAULT_TTA if tta is None else tta
    if not 1 <= int(tta) <= len(_VIEWS):
        raise InputError(f"{name}: tta must be 1 to {len(_VIEWS)}, got {tta}")
    net, meta = load_picker(picker_path)
    where = select_device(device)
    net = net.to(where)
    diameter_px = float(meta["diameter_px"])
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not 0 <= threshold <= 1:
        raise InputError(f"{name}: the picker's threshold is a probability in [0, 1], got {threshold}")
    if min_distance_px is None:
        min_distance_px = MIN_DISTANCE_FRACTION * diameter_px
    depth = 2 ** (len(meta["channels"]) - 1)
    chunk_size = max(depth, int(chunk_size) // depth * depth)
    halo = int(math.ceil(max(meta["patch_size"] / 4, diameter_px) / depth)) * depth
    nms_half = max(1, int(min_distance_px // 2))
    norm = _normalisation(data, name)
    shape = tuple(int(n) for n in data.shape)
    starts = [range(0, n, chunk_size) for n in shape]
    n_chunks = math.prod(len(s) for s in starts)
    numbers = list(meta["class_numbers"])
    junk = {k for k, n in zip(numbers, meta["class_names"], strict=True) if n == JUNK_CLASS_NAME}
    particle_channels = [i for i, k in enumerate(numbers) if k not in junk]
    if heatmap is not None and tuple(heatmap.shape) != shape:
        raise InputError(f"{name}: the heatmap must have the tomogram's shape {shape}, got {heatmap.shape}")
    pages = _MappedPages(data)
    zyx_all, cls_all, score_all = [], [], []
    done = 0
    with torch.inference_mode():
        for z0 in starts[0]:
            for y0 in starts[1]:
                for x0 in starts[2]:
                    core = [(s, min(s + chunk_size, n)) for s, n in zip((z0, y0, x0), shape, strict=True)]
                    outer = [(max(a - halo, 0), min(b + halo, n)) for (a, b), n in zip(core, shape, strict=True)]
                    block = _read_block(data, tuple(slice(a, b) for a, b in outer), name, outer, pages)
                    block = (block - norm[0]) / norm[1]
                    pad = [(0, -(-s // depth) * depth - s) for s in block.shape]
                    block = np.pad(block, pad, mode="reflect" if min(block.shape) > 1 else "edge")
                    x = torch.from_numpy(np.ascontiguousarray(block))[None, None].to(where)
                    heat = _heatmap(net, x, tta).cpu().numpy()[0]
                    heat = heat[(slice(None), *(slice(0, b - a) for a, b in outer))]
                    inner = tuple(slice(a - oa, b - oa) for (a, b), (oa, _) in zip(core, outer, strict=True))
                    if heatmap is not None and particle_channels:
                        heatmap[tuple(slice(a, b) for a, b in core)] = heat[particle_channels].max(axis=0)[inner]
                    for k in range(heat.shape[0]):
                        h = heat[k]
                        peak = (h == ndimage.maximum_filter(h, size=2 * nms_half + 1, mode="nearest")) & (
                            h >= threshold
                        )
                        found = np.argwhere(peak[inner])
                        if len(found):
                            zyx_all.append(found + np.array([a for a, _ in core]))
                            score_all.append(h[inner][tuple(found.T)])
                            cls_all.append(np.full(len(found), numbers[k]))
                    done += 1
                    yield Progress(
                        stage="pick", step=done, n_steps=n_chunks, unit="chunk",
                        elapsed_s=time.perf_counter() - t0,
                    )
    if zyx_all:
        zyx = np.concatenate(zyx_all).astype(np.float64)
        score = np.concatenate(score_all).astype(np.float64)
        cls = np.concatenate(cls_all).astype(np.int64)
        order = np.lexsort((zyx[:, 2], zyx[:, 1], zyx[:, 0], -score))
        zyx, score, cls = zyx[order], score[order], cls[order]
        kept = _greedy_min_distance(zyx, float(min_distance_px))
        zyx, score, cls = zyx[kept], score[kept], cls[kept]
        if junk and not keep_junk:
            real = ~np.isin(cls, list(junk))
            zyx, score, cls = zyx[real], score[real], cls[real]
        if max_particles is not None:
            zyx, score, cls = zyx[:max_particles], score[:max_particles], cls[:max_particles]
    else:
        zyx, score, cls = np.zeros((0, 3)), np.zeros(0), np.zeros(0, dtype=np.int64)
    table = make_particle_table(zyx, class_number=cls, source="auto", score=score)
    table.attrs["diameter_px"] = diameter_px
    table.attrs["class_names"] = dict(zip(numbers, meta["class_names"], strict=True))
    return table
