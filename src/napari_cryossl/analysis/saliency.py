"""3D Grad-CAM: which voxels of a subtomogram made the classifier choose a class.

Grad-CAM (Selvaraju et al. 2017) in 3D, as M3d-CAM (Gotkowski et al. 2020) does it:
for a chosen layer with feature maps A_k (N, K, g, g, g) and a class score y_c, the
channel weights are the spatially averaged gradients ``w_k = mean(dy_c / dA_k)``; the
map is ``ReLU(sum_k w_k A_k)``, upsampled trilinearly to the input box and scaled to
[0, 1] per particle. The default layer is the encoder's last residual block
(``model.cam_layer``), whose grid is half the box.

Written with a forward hook and ``torch.autograd.grad`` rather than
``monai.visualize.GradCAM``: MONAI's version takes one class index for the whole batch
(with ``class_idx=None`` it sums the predicted-class scores of *all* particles into each
particle's gradient), registers hooks that are never removed and flips the intensities
in its default normaliser. Ours computes each particle's map for its own class, leaves
the model as it found it, and is batched.

``paste_heatmaps`` puts per-particle maps back into tomogram space (max where boxes
overlap, clipped at the tomogram's edges) with the same box placement as
``extract.extract_subtomograms``, so a heatmap overlays the tomogram in napari.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryossl.base.options import BATCH_HELP, device_option, option

__all__ = [
    "GradcamSettings",
    "gradcam",
    "gradcam_for_set",
    "iter_gradcam",
    "iter_gradcam_for_set",
    "paste_heatmaps",
]


@dataclass
class GradcamSettings:
    """What a user chooses for Grad-CAM, declared once for ``cryossl gradcam`` and the
    dock's Grad-CAM section (``options.py``)."""

    target_class: int | None = option(
        None, "class number to explain (default: each particle's predicted class)",
        minimum=1, flag="--class",
    )
    layer: str | None = option(None, "layer name (default: the last convolutional block)")
    device: str = device_option()
    batch_size: int = option(16, BATCH_HELP, minimum=1)


def _find_layer(model, layer: str | None):
    """The module named ``layer`` (relative to the model, or to its encoder)."""
    from napari_cryossl.io.errors import InputError

    name = layer if layer is not None else getattr(model, "cam_layer", None)
    if name is None:
        raise InputError("the model has no default Grad-CAM layer (cam_layer); pass layer=")
    modules = dict(model.named_modules())
    for candidate in (name, f"encoder.{name}"):
        if candidate in modules and candidate:
            return modules[candidate]
    convish = [
        n for n, m in modules.items() if n and type(m).__name__ in ("Conv3d", "ResidualConcatBlock")
    ]
    raise InputError(
        f"Grad-CAM layer {name!r} is not in the model; choose one of e.g. {convish[-6:]}"
    )


def _as_batch(volumes, box_size: int):
    import torch

    from napari_cryossl.io.errors import InputError

    x = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, torch.Tensor) else volumes)
    if x.ndim == 4:
        x = x.unsqueeze(1)
    b = int(box_size)
    if x.ndim != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != (b, b, b):
        raise InputError(
            f"Grad-CAM needs subtomograms of shape (N, {b}, {b}, {b}) for this model, got "
            f"{tuple(x.shape)}"
        )
    return x.float()


def _targets(target, classes: np.ndarray, n: int) -> np.ndarray | None:
    """Class numbers -> output indices (None: each particle's predicted class)."""
    from napari_cryossl.io.errors import InputError

    if target is None:
        return None
    wanted = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,))
    index = np.searchsorted(classes, wanted)
    index = np.clip(index, 0, len(classes) - 1)
    bad = classes[index] != wanted
    if bad.any():
        raise InputError(
            f"class {int(wanted[bad][0])} is not one of the classifier's classes "
            f"{[int(c) for c in classes]}"
        )
    return index


def gradcam(
    model,
    volumes,
    *,
    target=None,
    layer: str | None = None,
    device="auto",
    batch_size: int = GradcamSettings.batch_size,
    class_numbers=None,
    amp: bool = True,
    skip_junk: bool = True,
    class_names=None,
) -> np.ndarray:
    """Grad-CAM heatmaps of subtomograms, one per particle, in [0, 1].

    Args:
        model: a ``models.Classifier``, or a classifier checkpoint path / state.
        volumes: (N, B, B, B) or (N, 1, B, B, B) normalised boxes (``SubtomogramSet.load``).
        target: class number(s) to explain (RELION 1-based, one for all or one per
            particle); None explains each particle's predicted class.
        layer: module name, relative to the classifier or its encoder (default
            ``model.cam_layer``, the last residual block).
        device: "auto", "cpu", "cuda", "cuda:N".
        batch_size: particles per forward/backward pass (halved on GPU OOM).
        class_numbers: class number of each output of a bare model (default 1..C;
            checkpoints carry their own).
        amp: autocast on CUDA.
        skip_junk: leave the map of a particle predicted as ``predict.JUNK_CLASS_NAME``
            ("not a particle") all zeros (only where ``target`` is None).
        class_names: names of the outputs of a bare model (checkpoints carry their own).

    Returns:
        float32 (N, B, B, B), ZYX like the input; each map scaled to [0, 1] (all zeros
        where the class score has no positive evidence, and for junk with ``skip_junk``).

    Raises:
        InputError: wrong box shape, unknown layer or class number.
    """
    import torch

    from napari_cryossl.analysis.predict import (
        forward_in_chunks,
        junk_class_number,
        load_classifier,
    )
    from napari_cryossl.nn.centring import roll_boxes
    from napari_cryossl.nn.devices import amp_dtype, autocast, select_device, to_device
    from napari_cryossl.nn.models import centring_of

    model, classes, names, _state = load_classifier(model, class_numbers=class_numbers)
    names = list(class_names) if class_names is not None else names
    junk = junk_class_number(classes, names) if skip_junk else None
    junk_index = -1 if junk is None else int(np.searchsorted(classes, junk))
    x_all = _as_batch(volumes, model.box_size)
    n = x_all.shape[0]
    b = int(model.box_size)
    out = np.zeros((n, b, b, b), dtype=np.float32)
    if n == 0:
        return out
    dev = select_device(device)
    dtype = amp_dtype(dev, amp)
    index = _targets(target, classes, n)
    module = _find_layer(model, layer)
    first_param = next(model.parameters())
    original_device, was_training = first_param.device, model.training
    model.to(dev).eval()
    captured: dict[str, Any] = {}

    def hook(_module, _inputs, output):
        captured["a"] = output

    handle = module.register_forward_hook(hook)
    centring = centring_of(model)

    def cam(x, idx):
        """(n, 1, B, B, B), target indices (n,) (-1: predicted) -> (n, B, B, B) maps."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # the graph exists even for frozen weights
            with autocast(dev, dtype):
                logits = model(x)
            logits = logits.float()
            pick = torch.where(idx >= 0, idx, logits.argmax(1))
            score = logits.gather(1, pick[:, None]).sum()
            acts = captured.pop("a")
            (grads,) = torch.autograd.grad(score, acts)
        acts, grads = acts.detach().float(), grads.float()
        weights = grads.mean(dim=(2, 3, 4), keepdim=True)
        maps = torch.relu((weights * acts).sum(dim=1, keepdim=True))
        maps = torch.nn.functional.interpolate(
            maps, size=(b, b, b), mode="trilinear", align_corners=False
        )
        if centring is not None and centring.last_offsets is not None:
            # the network saw each particle moved to the box centre: move its map back
            maps = roll_boxes(maps[:, 0], centring.last_offsets)[:, None]
        flat = maps.flatten(1)
        lo = flat.min(1, keepdim=True).values
        span = flat.max(1, keepdim=True).values - lo
        keep = (span > 0) & ((idx >= 0) | (pick != junk_index))[:, None]  # junk: blank
        flat = torch.where(keep, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
        return flat.view(-1, b, b, b)

    targets = np.full(n, -1, dtype=np.int64) if index is None else index
    chunk = [max(int(batch_size), 1)]
    try:
        with torch.inference_mode(False):
            for start in range(0, n, max(int(batch_size), 1)):
                stop = min(start + max(int(batch_size), 1), n)
                x = to_device(x_all[start:stop].clone(), dev, channels_last=False)
                idx = torch.as_tensor(targets[start:stop], device=dev)
                maps = forward_in_chunks(cam, x, chunk, dev, idx)
                out[start:stop] = maps.cpu().numpy()
    finally:
        handle.remove()
        model.to(original_device).train(was_training)
    return out


def iter_gradcam(
    model_or_checkpoint,
    data,
    *,
    target_class=None,
    layer: str | None = None,
    device="auto",
    batch_size: int = GradcamSettings.batch_size,
):
    """Grad-CAM of every particle of a ``SubtomogramSet``, batch by batch.

    The generator form that the dock runs in a worker (progress, cancel): yields a
    ``status.Progress`` (stage "gradcam", one step per batch) after each batch, then the
    (N, B, B, B) float32 maps in the set's order.
    """
    import math
    import time

    from napari_cryossl.analysis.predict import load_classifier
    from napari_cryossl.base.status import Progress

    t0 = time.perf_counter()
    model, classes, names, _state = load_classifier(model_or_checkpoint, box_size=data.box_size)
    n, step = len(data), max(int(batch_size), 1)
    n_steps = max(math.ceil(n / step), 1)
    maps = []
    for k, start in enumerate(range(0, n, step)):
        idx = np.arange(start, min(start + step, n))
        maps.append(
            gradcam(
                model, data.load(idx), target=target_class, layer=layer, device=device,
                batch_size=step, class_numbers=classes, class_names=names,
            )
        )
        yield Progress(
            stage="gradcam", step=k + 1, n_steps=n_steps, unit="batch",
            metrics={"particles": int(idx[-1]) + 1}, elapsed_s=time.perf_counter() - t0,
        )
    b = int(model.box_size)
    yield np.concatenate(maps) if maps else np.zeros((0, b, b, b), np.float32)


def paste_heatmaps(
    shape_zyx,
    centers_zyx,
    heatmaps,
    *,
    binning: int = 1,
    radius: float | None = None,
) -> np.ndarray:
    """Place per-particle heatmaps into a tomogram-sized volume (max where they overlap).

    Each map is kept only inside a sphere of ``radius`` voxels about its particle's
    centre: pasted as whole boxes, neighbouring maps tile the tomogram like a
    checkerboard and hide it; a sphere per particle shows what each particle's
    classification looked at, where the particle is.

    Box placement is ``extract.extract_subtomograms``'s: centres are rounded to the
    nearest voxel (``floor(c + 0.5)``) and a box of edge L covers
    ``[c - L//2, c - L//2 + L)``; parts outside the tomogram are clipped.

    Args:
        shape_zyx: tomogram shape (Z, Y, X).
        centers_zyx: (N, 3) particle centres in tomogram voxels, ZYX.
        heatmaps: (N, B, B, B) maps (e.g. from ``gradcam``).
        binning: the boxes' binning relative to the tomogram; maps are upsampled
            (trilinear) by this factor to L = B x binning voxels.
        radius: sphere radius in tomogram voxels; None: L / 3 (a box is about 1.5
            particle diameters, so this is about the particle's radius); 0 or less keeps
            whole boxes.

    Returns:
        float32 volume of ``shape_zyx``: 0 where no box reaches, else the largest map
        value covering each voxel.

    Raises:
        InputError: mismatched lengths, non-cubic maps, non-finite centres.
    """
    from napari_cryossl.io.errors import InputError

    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"tomogram shape must be 3 positive sizes (Z, Y, X), got {shape_zyx}")
    centers = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, 3)
    maps = np.asarray(heatmaps, dtype=np.float32)
    if maps.ndim != 4 or len(set(maps.shape[1:])) != 1:
        raise InputError(f"heatmaps must be cubic (N, B, B, B), got shape {maps.shape}")
    if len(maps) != len(centers):
        raise InputError(f"{len(maps)} heatmaps for {len(centers)} particle centres")
    if not np.isfinite(centers).all():
        raise InputError("particle centres must be finite to paste heatmaps into a tomogram")
    if int(binning) != binning or binning < 1:
        raise InputError(f"binning must be a positive integer, got {binning}")
    out = np.zeros(shape, dtype=np.float32)
    if len(maps) == 0:
        return out
    if binning > 1:
        from scipy.ndimage import zoom

        maps = np.stack([zoom(m, int(binning), order=1, mode="nearest") for m in maps])
    edge = maps.shape[1]
    rounded = np.floor(centers + 0.5).astype(np.int64)
    starts = rounded - edge // 2
    dims = np.asarray(shape)
    r = edge / 3.0 if radius is None else float(radius)
    if r > 0:
        # distance of each box voxel from the particle's (unrounded) centre
        grid = np.arange(edge, dtype=np.float32) - edge // 2
        offsets = (centers - rounded).astype(np.float32)
    for i, (m, start) in enumerate(zip(maps, starts, strict=True)):
        if r > 0:
            dz, dy, dx = (grid - o for o in offsets[i])
            inside = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2
            m = np.where(inside <= r * r, m, 0.0).astype(np.float32)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + edge, dims)
        if np.any(hi <= lo):
            continue  # box wholly outside the tomogram
        src = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
        dst = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.maximum(out[dst], m[src], out=out[dst])
    return out


def gradcam_for_set(model_or_checkpoint, data, out, *, progress=None, **options) -> list[Path]:
    """``iter_gradcam_for_set`` run to its end; ``progress(particles_done, n)`` is called
    as the maps come. Returns the files written."""
    gen = iter_gradcam_for_set(model_or_checkpoint, data, out, **options)
    while True:
        try:
            status = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(int(status.metrics.get("particles", 0)), len(data))


def iter_gradcam_for_set(
    model_or_checkpoint,
    data,
    out,
    *,
    target_class: int | None = None,
    layer: str | None = None,
    device="auto",
    batch_size: int = GradcamSettings.batch_size,
    radius: float | None = None,
    overwrite: bool = True,
):
    """Grad-CAM of every particle of a set, written as MRC files (what ``cryossl gradcam`` does).

    Particles from tomograms give one tomogram-sized heatmap per tomogram,
    ``<tomogram stem>_gradcam.mrc`` (same shape and voxel size as the tomogram, so it
    overlays it). Standalone subtomograms give one heatmap per particle,
    ``<subtomogram stem>_gradcam.mrc`` (or ``particle_000001_gradcam.mrc`` for arrays).
    Maps are computed a few batches at a time, so memory stays bounded.

    Args:
        model_or_checkpoint: classifier checkpoint path, state, or ``Classifier``.
        data: a ``SubtomogramSet`` with the classifier's box size.
        out: output folder (created).
        target_class: class number to explain; None: each particle's predicted class.
        layer: Grad-CAM layer (default: the last residual block).
        device: "auto", "cpu", "cuda", "cuda:N".
        batch_size: particles per pass.
        radius: tomogram-sized maps keep each particle's map inside a sphere of this
            many tomogram voxels (``paste_heatmaps``; None: a third of the box edge).
        overwrite: replace heatmap files already in ``out`` (False: refuse before any work).

    Yields:
        ``status.Progress`` (stage "gradcam", unit "particles") as the maps come.

    Returns:
        The files written.
    """
    import math
    import time

    from napari_cryossl.analysis.predict import load_classifier
    from napari_cryossl.base.status import Progress
    from napari_cryossl.io import refuse_to_replace, write_mrc

    t0 = time.perf_counter()
    model, classes, class_names, _state = load_classifier(
        model_or_checkpoint, box_size=data.box_size
    )
    out = Path(out)
    tomo_paths = list(getattr(data, "tomogram_paths", []) or [])
    names = (
        data.table["image_name"].fillna("").astype(str).tolist()
        if hasattr(data, "table")
        else [""] * len(data)
    )
    targets = (
        [out / f"{Path(path).stem}_gradcam.mrc" for path in tomo_paths]
        if tomo_paths
        else _heatmap_files(out, names)
    )
    refuse_to_replace(targets, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    n = len(data)
    step = max(int(batch_size), 1) * 4  # load a few passes at a time to bound memory
    n_steps = max(math.ceil(n / step), 1)
    done = 0
    k = 0

    def maps_for(rows: np.ndarray):
        """(indices, maps) a few batches at a time, each followed by its Progress."""
        nonlocal done, k
        for start in range(0, len(rows), step):
            idx = rows[start : start + step]
            maps = gradcam(
                model,
                data.load(idx),
                target=target_class,
                layer=layer,
                device=device,
                batch_size=batch_size,
                class_numbers=classes,
                class_names=class_names,
            )
            done += len(idx)
            k += 1
            yield idx, maps
            yield Progress(
                stage="gradcam", step=k, n_steps=n_steps, metrics={"particles": done},
                elapsed_s=time.perf_counter() - t0, unit="batch",
            )

    written: list[Path] = []
    if tomo_paths:
        from napari_cryossl.io import open_tomogram

        which = _tomogram_of_each_particle(data, len(tomo_paths))
        centers = data.centers_zyx()
        binning = int(getattr(data, "binning", 1))
        for t, path in enumerate(tomo_paths):
            tomo = open_tomogram(path)
            volume = np.zeros(tomo.shape, dtype=np.float32)
            for item in maps_for(np.flatnonzero(which == t)):
                if isinstance(item, Progress):
                    yield item
                    continue
                idx, maps = item
                pasted = paste_heatmaps(
                    tomo.shape, centers[idx], maps, binning=binning, radius=radius
                )
                np.maximum(volume, pasted, out=volume)
            write_mrc(targets[t], volume, tomo.voxel_size)
            written.append(targets[t])
        return written
    for item in maps_for(np.arange(n)):
        if isinstance(item, Progress):
            yield item
            continue
        idx, maps = item
        for i, m in zip(idx, maps, strict=True):
            write_mrc(targets[i], m, data.voxel_size)
            written.append(targets[i])
    return written


def _heatmap_files(out: Path, names: list[str]) -> list[Path]:
    """One ``<subtomogram stem>_gradcam.mrc`` per particle (``particle_000001`` without a
    file name); a stem seen twice (same file name in two folders) gets the row number."""
    used: set[str] = set()
    files = []
    for i, name in enumerate(names):
        stem = Path(name).stem if name else f"particle_{i + 1:06d}"
        if stem in used:
            stem = f"{stem}_{i + 1:06d}"
        used.add(stem)
        files.append(out / f"{stem}_gradcam.mrc")
    return files


def _tomogram_of_each_particle(data, n_tomograms: int) -> np.ndarray:
    """Index into ``data.tomogram_paths`` of each particle's tomogram."""
    if n_tomograms == 1:
        return np.zeros(len(data), dtype=np.int64)
    rows = getattr(data, "tomogram_indices", None)
    if callable(rows):
        return np.asarray(rows(), dtype=np.int64)
    # SubtomogramSet keeps this mapping privately (row -> tomogram number); ask B2 for a
    # public accessor if this changes.
    return np.asarray(data._rows, dtype=np.int64)
