"""Shared test settings: small, deterministic, CPU."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module, restored afterwards.

    On a busy 2-core machine two OpenMP threads that wait for each other made small 3D
    convolutions ~50x slower (measured: 1.7 s vs 0.03 s for a training step). Modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
