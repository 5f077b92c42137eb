"""Where the network runs: device selection, mixed precision, memory layout, transfers.

One place decides how the training and inference loops use the hardware, so that
``train/``, ``predict.py`` and ``saliency.py`` behave the same way:

- ``select_device("auto" | "cpu" | "cuda" | "cuda:1")``: "auto" takes CUDA when present.
  Under ``torchrun`` "auto" and "cuda" mean ``cuda:$LOCAL_RANK`` (one GPU per process).
  Apple's MPS is not used: 3D convolutions and 3D grid sampling are incomplete there.
- Mixed precision (``autocast``): bfloat16 on GPUs that support it (Ampere and newer),
  else float16 with a gradient scaler. On the CPU bfloat16 only where the processor
  computes it natively (AVX512-BF16 or AMX: oneDNN then runs 3D convolutions about twice
  as fast, docs/benchmarks.md); elsewhere float32, where bfloat16 would be emulated and
  slower.
- ``channels_last_3d`` memory layout: cuDNN's fastest 3D-convolution kernels want NDHWC
  tensors, and so do oneDNN's on the CPU (1.3-1.5x for both presets, measured).
- Host-to-device copies from pinned memory with ``non_blocking=True``, so the copy of
  batch k+1 overlaps the computation of batch k.
- A CUDA out-of-memory error becomes ``DeviceOutOfMemoryError`` with a message that
  says what to change, instead of a traceback from deep inside PyTorch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from napari_cryossl.io.errors import InputError

__all__ = [
    "DeviceOutOfMemoryError",
    "amp_dtype",
    "autocast",
    "channels_last_format",
    "cpu_has_native_bf16",
    "describe",
    "empty_cache",
    "fused_adam",
    "is_out_of_memory",
    "make_grad_scaler",
    "memory_format",
    "select_device",
    "to_device",
]


class DeviceOutOfMemoryError(InputError, RuntimeError):
    """The accelerator ran out of memory; the message says which setting to lower.

    It is an ``InputError`` (so the CLI reports it as one line, and the widgets as a
    notification, like any other problem the user can fix) and a ``RuntimeError``
    (what PyTorch's own out-of-memory error is).
    """


def select_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a ``torch.device``.

    Args:
        spec: "auto" (CUDA if available, else CPU), "cpu", "cuda" (the process's GPU:
            ``cuda:$LOCAL_RANK`` under torchrun, else the current one), "cuda:N", or a
            ``torch.device``. None means "auto".

    Returns:
        The device.

    Raises:
        InputError: unknown spec, CUDA asked for but not available, or a GPU index
            that does not exist.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return _default_cuda() if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {spec!r}: CUDA is not available here ({describe()}); "
                "use --device cpu or auto"
            )
        if text == "cuda":
            return _default_cuda()
        index_text = text.split(":", 1)[1]
        if not index_text.isdigit():
            raise InputError(f"device {spec!r}: expected cuda:N with N a GPU number")
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(
                f"device {spec!r}: there {'is' if count == 1 else 'are'} only {count} GPU(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise InputError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")


def _default_cuda() -> torch.device:
    """The GPU of this process: LOCAL_RANK under torchrun, else the current device."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and local_rank.isdigit():
        index = int(local_rank) % max(torch.cuda.device_count(), 1)
    else:
        index = torch.cuda.current_device()
    return torch.device("cuda", index)


def describe(device: str | torch.device | None = None) -> str:
    """One line about the hardware, for logs and the GUI.

    Args:
        device: the device to describe; None describes what "auto" would pick.

    Returns:
        e.g. "CUDA: NVIDIA H100 80GB HBM3 (79 GB), 1 GPU" or "CPU (no CUDA), 2 threads".
    """
    if device is None:
        if not torch.cuda.is_available():
            return f"CPU (no CUDA), {torch.get_num_threads()} threads"
        device = _default_cuda()
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gib = props.total_memory / 1024**3
        count = torch.cuda.device_count()
        return f"CUDA: {props.name} ({gib:.0f} GB), {count} GPU{'s' if count > 1 else ''}"
    cuda = "CUDA available" if torch.cuda.is_available() else "no CUDA"
    return f"CPU ({cuda}), {torch.get_num_threads()} threads"


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """Reduced-precision dtype for autocast on ``device``, or None for float32.

    bfloat16 where the GPU supports it (same range as float32: no loss scaling needed),
    else float16. On the CPU bfloat16 where the processor has native bfloat16
    arithmetic (``cpu_has_native_bf16``), else None.
    """
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN
    sees it. ``CRYOSSL_CPU_BF16=0`` turns CPU bfloat16 off, ``=1`` forces it on."""
    forced = os.environ.get("CRYOSSL_CPU_BF16", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    except (AttributeError, RuntimeError):  # private helpers moved in another release
        return False


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype``; a no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A ``torch.amp.GradScaler`` for float16 training, else None.

    float16 gradients underflow without loss scaling; bfloat16 and float32 do not.
    """
    if dtype is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def fused_adam(params) -> bool:
    """Whether Adam/AdamW can take ``fused=True`` for these parameters: floating point, on
    the CPU or CUDA. The fused kernel updates each tensor in one pass; for rb3d's 268 M
    fully connected weights on the CPU a step took 0.39 s instead of 3.5 s."""
    params = list(params)
    return bool(params) and all(
        p.is_floating_point() and p.device.type in {"cpu", "cuda"} for p in params
    )


def memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last_3d`` on CUDA and the CPU (cuDNN's and oneDNN's fast NDHWC
    kernels), else contiguous."""
    return channels_last_format() if device.type in {"cuda", "cpu"} else torch.contiguous_format


def channels_last_format() -> torch.memory_format:
    """``channels_last_3d``, unless ``CRYOSSL_CHANNELS_LAST=0`` asks for the contiguous
    layout (to compare the two)."""
    if os.environ.get("CRYOSSL_CHANNELS_LAST", "").strip() == "0":
        return torch.contiguous_format
    return torch.channels_last_3d


def to_device(
    x: torch.Tensor, device: torch.device, *, channels_last: bool | None = None
) -> torch.Tensor:
    """Copy a CPU batch to ``device``, asynchronously when the source is pinned.

    Args:
        x: CPU tensor; pin it (``DataLoader(pin_memory=True)`` does) for an async copy.
        device: target device.
        channels_last: use ``channels_last_3d`` (5D tensors only); None: as
            ``memory_format(device)`` says.

    Returns:
        The tensor on ``device``.
    """
    out = x.to(device, non_blocking=x.is_pinned())
    if channels_last is None:
        channels_last = memory_format(device) == torch.channels_last_3d
    if channels_last and out.ndim == 5:
        out = out.contiguous(memory_format=torch.channels_last_3d)
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator (or cuDNN/cuBLAS workspace) out-of-memory error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError in torch >= 2.5
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return "out of memory" in text.lower() and ("CUDA" in text or "cuDNN" in text)
    return False


def empty_cache(device: torch.device) -> None:
    """Give cached blocks back to the GPU after an out-of-memory error (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
