"""torchrun / DistributedDataParallel: sharding, and 2 real gloo processes vs one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_cryossl.analysis.predict import predict
from napari_cryossl.nn.checkpoints import load_checkpoint
from napari_cryossl.nn.distributed import DistributedContext, is_main_process, shard_range
from napari_cryossl.particles.dataset import SubtomogramSet
from napari_cryossl.train import FinetuneConfig, iter_finetune, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 3), (2, 4), (0, 2), (7, 1)])
def test_prediction_shards_cover_every_row_once_in_order(n, world):
    shards = [DistributedContext(rank=r, world_size=world).shard(n) for r in range(world)]
    assert np.array_equal(np.concatenate(shards), np.arange(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [shard_range(n, r, world) for r in range(world)][0][0] == 0


def test_local_batches_of_all_ranks_make_up_the_single_process_batches():
    """Why DDP with batch B/world per rank trains like one process with batch B."""
    n, batch, world, seed = 32, 8, 2, 5
    single = DistributedContext().sampler(n, shuffle=True, seed=seed, drop_last=False)
    single.set_epoch(3)
    order = list(single)
    global_batches = [sorted(order[i : i + batch]) for i in range(0, n, batch)]
    per_rank = []
    for rank in range(world):
        sampler = DistributedContext(rank=rank, world_size=world).sampler(
            n, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(3)
        local = list(sampler)
        per_rank.append(
            [local[i : i + batch // world] for i in range(0, len(local), batch // world)]
        )
    combined = [sorted(a + b) for a, b in zip(*per_rank, strict=True)]
    assert combined == global_batches


def test_rank_zero_is_the_main_process(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.delenv("RANK")
    assert is_main_process() and not DistributedContext.from_environment().enabled


WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from napari_cryossl.particles.dataset import SubtomogramSet
    from napari_cryossl.nn.distributed import DistributedContext
    from napari_cryossl.analysis.predict import predict
    from napari_cryossl.train import FinetuneConfig, PretrainConfig, iter_finetune, iter_pretrain, run

    tmp = sys.argv[1]
    data = SubtomogramSet.from_arrays(
        np.load(os.path.join(tmp, "volumes.npy")), np.load(os.path.join(tmp, "labels.npy")),
        voxel_size=10.0,
    )
    with open(os.path.join(tmp, "finetune.json")) as fh:
        config = FinetuneConfig(**json.load(fh), keep_state=True)
    last = run(iter_finetune(data, config, os.path.join(tmp, "ddp_classifier.pt")))
    ctx = DistributedContext.from_environment()
    assert (ctx.world_size, ctx.backend) == (2, "gloo"), ctx

    pred = predict(
        os.path.join(tmp, "ddp_classifier.pt"), data, batch_size=5, device="cpu", amp=False
    )
    if ctx.is_main:
        np.savez(os.path.join(tmp, "ddp_predictions.npz"), prob=pred.probabilities,
                 classes=pred.class_numbers, emb=pred.embeddings)
    else:
        assert pred is None

    pre = PretrainConfig(method="moco", preset="rb3d-small", epochs=1, batch_size=8,
                         device="cpu", ssl_options={"queue_size": 64}, keep_state=True)
    statuses = list(iter_pretrain(data, pre, os.path.join(tmp, "ddp_encoder.pt")))
    assert statuses[-1].done and statuses[-1].n_steps == 4, statuses[-1]
    # leave together: a rank exiting while gloo still talks to it can abort the other
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_and_predict_like_one_process(tmp_path):
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(32, 16, 16, 16)).astype(np.float32)
    labels = np.resize(np.array([1, 2], dtype=np.int64), 32)
    volumes[labels == 2, 6:10, 6:10, 6:10] += 2.0  # something to learn
    np.save(tmp_path / "volumes.npy", volumes)
    np.save(tmp_path / "labels.npy", labels)
    # Deterministic training: no augmentation, no dropout; the data order comes from the
    # seeded DistributedSampler in both cases.
    # The narrow flatten layout has no BatchNorm: with BatchNorm (rb3d-small) every
    # process normalises with its own share of the batch, as DDP does, so two processes
    # and one could not agree to 1e-4. SGD: Adam divides by the gradients' running RMS,
    # which turns the all-reduce's rounding in near-zero gradients into lr-sized steps.
    settings = dict(
        preset="rb3d",
        encoder_options={"width": 16, "fc_dim": 256},
        optimizer="sgd",
        min_steps=0,
        epochs=2,
        batch_size=8,
        lr=0.01,
        val_fraction=0.0,
        augment=False,
        dropout=0.0,
        device="cpu",
        seed=0,
        amp=False,  # float32: bfloat16 rounds half-batches and whole ones differently
    )
    (tmp_path / "finetune.json").write_text(json.dumps(settings))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out}"

    data = SubtomogramSet.from_arrays(volumes, labels, voxel_size=10.0)
    run(iter_finetune(data, FinetuneConfig(**settings), tmp_path / "single.pt"))
    assert load_checkpoint(tmp_path / "ddp_classifier.last.pt")["progress"]["world_size"] == 2
    ddp = load_checkpoint(tmp_path / "ddp_classifier.pt")["model"]
    single = load_checkpoint(tmp_path / "single.pt")["model"]
    other_order = dict(settings, seed=1)
    run(iter_finetune(data, FinetuneConfig(**other_order), tmp_path / "other.pt"))
    other = load_checkpoint(tmp_path / "other.pt")["model"]
    ddp_gap = max(float((ddp[k] - single[k]).abs().max()) for k in single)
    order_gap = max(float((other[k] - single[k]).abs().max()) for k in single)
    print(f"DDP vs one process: {ddp_gap:.2e}; another data order: {order_gap:.2e}")
    assert ddp_gap < 1e-4 and ddp_gap < order_gap / 100, (ddp_gap, order_gap)

    # predictions gathered on rank 0 in input order == one process
    got = np.load(tmp_path / "ddp_predictions.npz")
    want = predict(tmp_path / "ddp_classifier.pt", data, device="cpu", amp=False)
    np.testing.assert_allclose(got["prob"], want.probabilities, atol=1e-5)
    np.testing.assert_array_equal(got["classes"], want.class_numbers)
    np.testing.assert_allclose(got["emb"], want.embeddings, atol=1e-4, rtol=1e-4)

    # MoCo: each step enqueues the keys of both ranks (8 = 2 x 4) into one shared queue
    encoder = load_checkpoint(tmp_path / "ddp_encoder.last.pt")
    assert encoder["progress"]["global_step"] == 4 and encoder["progress"]["world_size"] == 2
    assert int(encoder["ssl_queue"]["ptr"]) == 4 * 8  # 4 * 4 if each rank kept its own
