"""Where the time goes: torch.profiler over inference, a fine-tuning step and a MoCo step.

Runs each case a few times under ``torch.profiler`` the way today's code runs it on the
device (``models.for_inference`` for inference; ``devices.memory_format`` and
``devices.amp_dtype`` everywhere) and prints the operators that took the most time,
grouped by input shape, as a Markdown table per case. No timing targets: this is the
map that says what to make faster.

    python benchmarks/profile_networks.py --preset rb3d-small --threads 1
    python benchmarks/profile_networks.py --preset rb3d --cases inference --batch 8
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rb3d-small")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cases", nargs="+", default=["inference", "finetune", "moco"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from napari_cryossl.nn.augment import SubtomogramAugment
    from napari_cryossl.nn.devices import (
        amp_dtype,
        autocast,
        describe,
        memory_format,
        select_device,
        to_device,
    )
    from napari_cryossl.nn.models import Classifier, build_encoder, for_inference
    from napari_cryossl.nn.ssl import build_ssl
    from napari_cryossl.train.config import PRETRAIN_ROTATION_AUGMENT, ROTATION_AUGMENT

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    dtype = amp_dtype(device)
    layout = memory_format(device)
    torch.manual_seed(0)
    x = to_device(torch.randn(args.batch, 1, args.box, args.box, args.box), device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def inference_case():
        model = for_inference(Classifier(build_encoder(args.preset, args.box), 10), dtype)
        model = model.to(device, memory_format=layout)

        def run():
            with torch.inference_mode(), autocast(device, dtype):
                model(x)

        return run

    def finetune_case():
        model = Classifier(build_encoder(args.preset, args.box), 10, dropout=0.3)
        model = model.to(device, memory_format=layout).train()
        opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.05)
        augment = SubtomogramAugment(**ROTATION_AUGMENT)

        def run():
            with autocast(device, dtype):
                logits = model(augment(x))
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    def moco_case():
        model = build_ssl("moco", build_encoder(args.preset, args.box))
        model = model.to(device, memory_format=layout).train()
        opt = model.configure_optimizer()
        augment = SubtomogramAugment(**PRETRAIN_ROTATION_AUGMENT)

        def run():
            with autocast(device, dtype):
                loss = model(augment(x), augment(x))
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            model.after_optimizer_step(0.5)

        return run

    makers = {"inference": inference_case, "finetune": finetune_case, "moco": moco_case}
    precision = str(dtype).removeprefix("torch.") if dtype else "float32"
    print(f"{describe(device)}; {args.preset} {args.box}^3, batch {args.batch}, {precision}, "
          f"{str(layout).removeprefix('torch.')}, {args.repeats} repeats after one warm-up")
    for case in args.cases:
        run = makers[case]()
        run()  # warm-up: oneDNN primitive caches, MoCo's queue
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.repeats):
                run()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\n{case}: {total / 1e3 / args.repeats:.0f} ms per call (self CPU time)\n")
        print("| share | operator | input shapes |")
        print("|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
            print(f"| {100 * e.self_cpu_time_total / total:.1f} % | `{e.key}` | {shapes} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
