"""Several GPUs or nodes: torchrun + DistributedDataParallel, sharding and gathering.

``torchrun --nproc_per_node=N -m napari_cryossl <pretrain|finetune|predict> ...`` starts N
copies of the CLI. Each one reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` from its environment; the first training or
prediction call (``DistributedContext.from_environment``) joins the process group, NCCL
on GPUs and gloo on CPUs. Without those variables everything runs in one process and
nothing here costs anything.

What each rank does (see ``docs/training.md``):

- training: every rank builds the same model from the same seed; DDP averages the
  gradients, so the weights stay identical. ``DistributedSampler`` gives each rank a
  disjoint share of every epoch's permutation; the batch size of the configuration is
  the *global* batch (each rank takes ``batch_size // world_size``).
- prediction: each rank classifies one contiguous share of the particles (no padding,
  so no duplicates), and rank 0 gathers the results back into the input order.
- only rank 0 writes checkpoints and output files.

The process group is torch's own global state; this module only wraps it in a small
context object that the loops receive, so single-process code paths stay plain.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DistributedContext",
    "env_world_size",
    "is_main_process",
    "shard_range",
    "unwrap",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True on rank 0 or when not distributed: the process that writes outputs and prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous share ``[start, stop)`` of ``n`` items for ``rank``, without padding.

    The first ``n % world_size`` ranks get one item more; concatenating the shards in
    rank order gives ``range(n)`` back, which is what gathering relies on.
    """
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in a (possibly one-process) run.

    Attributes:
        rank: global rank (0 writes outputs).
        world_size: number of processes; 1 = not distributed.
        local_rank: rank on this node (its GPU index under torchrun).
        backend: "nccl", "gloo" or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def single(cls) -> DistributedContext:
        """A one-process context (what you get without torchrun)."""
        return cls()

    @classmethod
    def from_environment(cls, device=None) -> DistributedContext:
        """Join the torchrun process group if the environment describes one.

        Uses the existing process group when one is initialised (e.g. by the caller's
        own script); else, when ``WORLD_SIZE`` > 1, initialises one with
        ``init_method="env://"``: NCCL when ``device`` is a CUDA device, gloo otherwise.
        The group is destroyed when the process exits.

        Args:
            device: the ``torch.device`` this process computes on (chooses the backend
                and, for CUDA, becomes the current device).

        Returns:
            The context; ``DistributedContext()`` (one process) without torchrun.
        """
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            return cls()
        if not dist.is_initialized():
            if env_world_size() <= 1:
                return cls()
            is_cuda = device is not None and torch.device(device).type == "cuda"
            if is_cuda:
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group(backend="nccl" if is_cuda else "gloo", init_method="env://")
            atexit.register(_destroy_process_group)
        world = dist.get_world_size()
        if world <= 1:
            return cls()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return cls(
            rank=dist.get_rank(),
            world_size=world,
            local_rank=local,
            backend=str(dist.get_backend()),
        )

    # ------------------------------------------------------------------ properties
    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: writes checkpoints and outputs."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool, device=None) -> bool:
        """True on every rank if ``flag`` is True on any rank.

        Used for stop requests: a rank that stopped alone would leave the others
        waiting forever in the next gradient all-reduce.
        """
        if not self.enabled:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device(device))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float, device=None) -> float:
        """Average of a float over the ranks (e.g. an epoch loss)."""
        if not self.enabled:
            return float(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor(
            [float(value)], dtype=torch.float64, device=self._collective_device(device)
        )
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Collect one picklable object per rank on rank 0 (rank order); None elsewhere."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self, device):
        import torch

        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu") if device is None or self.backend == "gloo" else device

    # ------------------------------------------------------------------ data and models
    def shard(self, n: int) -> np.ndarray:
        """This rank's contiguous indices of ``n`` items (no padding; see ``shard_range``)."""
        start, stop = shard_range(n, self.rank, self.world_size)
        return np.arange(start, stop, dtype=np.int64)

    def sampler(self, n: int, *, shuffle: bool, seed: int, drop_last: bool):
        """``torch.utils.data.DistributedSampler`` over ``n`` items for this rank.

        Also used with one process (rank 0 of 1), so single-process and multi-process
        runs draw the same per-epoch permutation ``randperm(n, seed + epoch)``: rank r
        gets ``perm[r::world_size]``, and local batch k of every rank together is
        exactly global batch k of a one-process run.
        """
        from torch.utils.data import DistributedSampler

        return DistributedSampler(
            range(int(n)),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
        )

    def wrap(self, module, device, **ddp_options):
        """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

        Args:
            module: the module whose ``forward`` computes the loss (its parameters are
                already on ``device``).
            device: this rank's device.
            **ddp_options: passed on (e.g. ``find_unused_parameters``,
                ``broadcast_buffers``).
        """
        if not self.enabled:
            return module
        import torch
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(device)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, **ddp_options)


def unwrap(module):
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
