"""Today's networks against an earlier commit's, in one process: inference, a fine-tuning
step and a MoCo pretraining step at the CPU preset.

The earlier code is ``src/napari_cryossl/models.py`` of ``--baseline`` (default: the
commit before the speed-ups), read with ``git show`` and imported beside today's package,
and run the way that commit ran it: contiguous float32 tensors on the CPU, the model in
eval mode for inference. Today's code runs the way ``predict`` and ``train`` run it now:
``models.for_inference`` (Conv+BatchNorm fused), ``devices.memory_format`` and
``devices.amp_dtype`` (channels-last; bfloat16 where the CPU has it natively). Both get
the same weights, the same boxes, the same augmentation and the same optimiser (today's:
the old MoCo step runs today's objective and fused Adam around the old encoder).

The timing is interleaved (each round times every case in turn, old then new), so load
from other work on the machine hits both alike; the table gives the median of the
per-round ratios and the median times.

    python benchmarks/bench_speedup.py --threads 1 --rounds 5
    CRYOSSL_CPU_BF16=0 python benchmarks/bench_speedup.py   # float32 only
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The last commit before rb3d-small's input stage and the CPU layout/precision changed.
BASELINE = "d4034f0"
ROOT = Path(__file__).resolve().parents[1]


def baseline_models(rev: str):
    """``napari_cryossl.nn.models`` as it was at ``rev``, as a separate module."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/napari_cryossl/models.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="cryossl-baseline-")) / "baseline_models.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_models"] = module
    spec.loader.exec_module(module)
    return module


def cases(old, preset: str, box: int, infer_batch: int, train_batch: int) -> dict:
    """{name: (old_fn, new_fn)}: each call does one unit of work (a batch or a step)."""
    import torch

    from napari_cryossl.nn import models as new
    from napari_cryossl.nn.augment import SubtomogramAugment
    from napari_cryossl.nn.devices import amp_dtype, autocast, memory_format, to_device
    from napari_cryossl.nn.ssl import build_ssl
    from napari_cryossl.train.config import PRETRAIN_ROTATION_AUGMENT, ROTATION_AUGMENT

    cpu = torch.device("cpu")
    dtype = amp_dtype(cpu)
    layout = memory_format(cpu)
    gen = torch.Generator().manual_seed(0)
    boxes = torch.randn(max(infer_batch, train_batch), 1, box, box, box, generator=gen)
    labels = torch.randint(0, 10, (train_batch,), generator=gen)
    finetune_aug = SubtomogramAugment(**ROTATION_AUGMENT)
    pretrain_aug = SubtomogramAugment(**PRETRAIN_ROTATION_AUGMENT)

    def pair(make):
        torch.manual_seed(0)
        a = make(old)
        torch.manual_seed(0)
        b = make(new)
        b.load_state_dict(a.state_dict())
        return a, b

    # inference
    clf_old, clf_new = pair(lambda m: m.Classifier(m.build_encoder(preset, box), 10))
    clf_old.eval()
    fused = new.for_inference(clf_new).to(memory_format=layout)
    x_infer = boxes[:infer_batch]

    def infer_old():
        with torch.inference_mode():
            clf_old(x_infer)

    def infer_new():
        with torch.inference_mode(), autocast(cpu, dtype):
            fused(to_device(x_infer, cpu))

    # fine-tuning step: augmentation, forward, cross-entropy, backward, AdamW
    ft_old, ft_new = pair(lambda m: m.Classifier(m.build_encoder(preset, box), 10, dropout=0.3))
    ft_new.to(memory_format=layout)
    opts = {
        "old": torch.optim.AdamW(ft_old.parameters(), 2e-3, weight_decay=0.05),
        "new": torch.optim.AdamW(ft_new.parameters(), 2e-3, weight_decay=0.05),
    }
    x_train = boxes[:train_batch]

    def finetune_step(model, opt, x, amp):
        model.train()
        x = finetune_aug(x)
        with autocast(cpu, amp):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # MoCo pretraining step: two views, query and key encoders, queue
    moco_old, moco_new = pair(lambda m: build_ssl("moco", m.build_encoder(preset, box)))
    moco_new.to(memory_format=layout)
    popts = {"old": moco_old.configure_optimizer(), "new": moco_new.configure_optimizer()}

    def pretrain_step(model, opt, x, amp):
        model.train()
        v1, v2 = pretrain_aug(x), pretrain_aug(x)
        with autocast(cpu, amp):
            loss = model(v1, v2)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        model.after_optimizer_step(0.5)

    return {
        f"inference, batch {infer_batch}": (infer_old, infer_new, infer_batch),
        f"fine-tuning step, batch {train_batch}": (
            lambda: finetune_step(ft_old, opts["old"], x_train, None),
            lambda: finetune_step(ft_new, opts["new"], to_device(x_train, cpu), dtype),
            train_batch,
        ),
        f"MoCo pretraining step, batch {train_batch}": (
            lambda: pretrain_step(moco_old, popts["old"], x_train, None),
            lambda: pretrain_step(moco_new, popts["new"], to_device(x_train, cpu), dtype),
            train_batch,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--preset", default="rb3d-small")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/speedup.json"))
    args = parser.parse_args(argv)

    import torch

    from napari_cryossl.nn.devices import amp_dtype, describe, memory_format

    if args.threads:
        torch.set_num_threads(args.threads)
    old = baseline_models(args.baseline)
    work = cases(old, args.preset, args.box, args.infer_batch, args.train_batch)
    times = {name: {"old": [], "new": []} for name in work}
    for f_old, f_new, _n in work.values():  # warm-up (oneDNN primitive caches)
        f_old(), f_new()
    for r in range(args.rounds):
        for name, (f_old, f_new, _n) in work.items():
            order = (("old", f_old), ("new", f_new)) if r % 2 == 0 else (("new", f_new), ("old", f_old))
            for key, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name][key].append(time.perf_counter() - t0)
    cpu = torch.device("cpu")
    rows = []
    for name, (_o, _n, n) in work.items():
        t_old, t_new = times[name]["old"], times[name]["new"]
        ratios = [a / b for a, b in zip(t_old, t_new, strict=True)]
        rows.append(
            {
                "case": name,
                "old_s": round(statistics.median(t_old), 4),
                "new_s": round(statistics.median(t_new), 4),
                "old_per_s": round(n / statistics.median(t_old), 1),
                "new_per_s": round(n / statistics.median(t_new), 1),
                "speedup": round(statistics.median(ratios), 2),
                "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
            }
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": describe("cpu"),
        "baseline": args.baseline,
        "preset": args.preset,
        "box": args.box,
        "rounds": args.rounds,
        "new_layout": str(memory_format(cpu)),
        "new_amp": str(amp_dtype(cpu)),
        "rows": rows,
    }
    print(f"{result['device']}; today's code: {result['new_layout']}, autocast {result['new_amp']}")
    print(f"| {args.preset} {args.box}^3 | {args.baseline} | today | speed-up (range) |")
    print("|---|---|---|---|")
    for row in rows:
        lo, hi = row["speedup_range"]
        print(
            f"| {row['case']} | {row['old_s']:.3f} s | {row['new_s']:.3f} s | "
            f"**{row['speedup']:.2f}x** ({lo:.2f}-{hi:.2f}) |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
