"""Our networks beside a peer's, in one process on one device: subtomograms/s and GFLOP/s.

Times the classifiers that ``predict`` runs (``rb3d`` and ``rb3d-small`` at 32^3) and
TomoTwin's SiameseNet3D (Rice et al. 2023, 37^3 boxes; the network as TomoTwin builds it:
``SiameseNet3D(norm_name="GroupNorm", norm_kwargs={"num_groups": 64},
output_channels=32).get_model()``), a peer's 3D CNN doing the same kind of work. Same
process, same device, same batch (16), random input, ``torch.inference_mode``, in the
layout and precision ``predict`` uses on the device (``devices.memory_format``,
``devices.amp_dtype``: channels-last; bfloat16 autocast on CUDA and on CPUs with native
bfloat16, else float32), ours with Conv+BatchNorm fused as ``predict`` runs them. FLOPs are counted for every network alike with
``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of every convolution and
matrix product).

The timing is interleaved: each round times every network for about ``--round-s``
seconds, in a rotating order, so that noise from other work on the machine hits all of
them alike; the ratio to TomoTwin's achieved GFLOP/s is taken within each round. The
table gives the median over the rounds and the range.

TomoTwin is an optional, benchmark-only dependency (never a runtime one):

    pip install --no-deps tomotwin-cryoet
    python benchmarks/bench_peer.py --rounds 5 --out benchmarks/out/peer

Without it the script says so and times our networks only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

PEER = "TomoTwin SiameseNet3D"


@dataclass
class Net:
    name: str
    box: int
    model: object
    x: object = None
    gflop: float = 0.0  # per subtomogram
    params_m: float = 0.0
    calls_per_round: int = 1
    rates: list[float] = field(default_factory=list)  # subtomograms/s, one per round

    @property
    def gflops(self) -> list[float]:
        return [r * self.gflop for r in self.rates]


def build_networks(names: list[str]) -> tuple[list[Net], str | None]:
    """The networks asked for; and why TomoTwin is missing, if it is."""
    import torch

    from napari_cryossl.nn.models import Classifier, build_encoder

    nets, missing = [], None
    for name in names:
        torch.manual_seed(0)
        if name == "tomotwin":
            try:
                from tomotwin.modules.networks.SiameseNet3D import SiameseNet3D
            except Exception as exc:  # not installed, or it fails to import here
                missing = (
                    f"TomoTwin could not be imported ({type(exc).__name__}: {exc}); "
                    "`pip install --no-deps tomotwin-cryoet` to compare; timing ours only"
                )
                continue
            model = SiameseNet3D(
                norm_name="GroupNorm", norm_kwargs={"num_groups": 64}, output_channels=32
            ).get_model()
            nets.append(Net(PEER, 37, model))
        else:
            nets.append(Net(name, 32, Classifier(build_encoder(name, 32), n_classes=10)))
    return nets, missing


def count_gflop(model, x, device, dtype) -> float:
    """GFLOP of one forward pass per subtomogram, by ``FlopCounterMode``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_cryossl.nn.devices import autocast

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter, autocast(device, dtype):
        model(x)
    return counter.get_total_flops() / x.shape[0] / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["rb3d", "rb3d-small", "tomotwin"],
                        help="our presets and/or 'tomotwin'")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-s", type=float, default=3.0,
                        help="seconds each network is timed per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's)")
    parser.add_argument("--note", default="", help="written under the table (e.g. the load)")
    parser.add_argument("--out", type=Path, default=None, help="folder for peer.json, peer.md")
    args = parser.parse_args(argv)

    import torch

    from napari_cryossl.nn.devices import (
        amp_dtype,
        autocast,
        describe,
        memory_format,
        select_device,
        to_device,
    )
    from napari_cryossl.nn.models import for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    dtype = amp_dtype(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    nets, missing = build_networks(args.models)
    if missing:
        print(missing, flush=True)
    if not nets:
        raise SystemExit("no network to time")
    load_before = os.getloadavg()
    generator = torch.Generator().manual_seed(0)
    layout = memory_format(device)
    for net in nets:
        net.params_m = sum(p.numel() for p in net.model.parameters()) / 1e6
        # ours as `predict` runs them (Conv+BatchNorm fused); every network in the layout
        # and precision `predict` uses on this device
        model = net.model.eval() if net.name == PEER else for_inference(net.model, dtype)
        net.model = model.to(device, memory_format=layout)
        net.x = torch.randn(args.batch, 1, net.box, net.box, net.box, generator=generator)
        net.x = to_device(net.x, device)
        net.gflop = count_gflop(net.model, net.x, device, dtype)

    def call(net: Net):
        with autocast(device, dtype):
            return net.model(net.x)

    with torch.inference_mode():
        # warm-up, and how many batches make one round of about --round-s seconds
        for net in nets:
            call(net)
            sync()
            t0 = time.perf_counter()
            call(net)
            sync()
            net.calls_per_round = max(1, round(args.round_s / (time.perf_counter() - t0)))
        for r in range(args.rounds):
            order = nets[r % len(nets):] + nets[: r % len(nets)]
            for net in order:
                sync()
                t0 = time.perf_counter()
                for _ in range(net.calls_per_round):
                    call(net)
                sync()
                net.rates.append(net.calls_per_round * args.batch / (time.perf_counter() - t0))
            print(f"round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{n.name} {n.rates[-1]:.1f}/s" for n in nets), flush=True)
    load_after = os.getloadavg()

    peer = next((n for n in nets if n.name == PEER), None)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = f"{describe(device)} ({platform.processor() or platform.machine()})"
    precision = str(dtype).removeprefix("torch.") if dtype else "float32"
    lines = [
        f"{date}, {where}, torch {torch.__version__}, {torch.get_num_threads()} intra-op "
        f"threads, batch {args.batch}, {precision}, `torch.inference_mode`; {args.rounds} "
        f"interleaved rounds of ~{args.round_s:g} s per network; median (range) over the "
        f"rounds; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        "",
        "| network (input) | parameters | GFLOP per subtomogram | subtomograms/s | "
        "achieved GFLOP/s | vs TomoTwin's GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for net in nets:
        ratios = (
            [a / b for a, b in zip(net.gflops, peer.gflops, strict=True)] if peer else []
        )
        row = {
            "network": net.name,
            "box": net.box,
            "parameters_m": net.params_m,
            "gflop_per_subtomogram": net.gflop,
            "subtomograms_per_s": net.rates,
            "gflops": net.gflops,
            "ratio_to_peer_gflops": ratios,
        }
        rows.append(row)

        def span(values, digits):
            med = statistics.median(values)
            return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

        ratio_text = "1×" if net is peer else (f"{span(ratios, 2)}×" if ratios else "–")
        lines.append(
            f"| {net.name} ({net.box}³) | {net.params_m:.3g} M | {net.gflop:.2f} | "
            f"{span(net.rates, 1)} | {span(net.gflops, 0)} | {ratio_text} |"
        )
    if missing:
        lines += ["", missing]
    if args.note:
        lines += ["", args.note]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {
            "date": date, "device": where, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "batch": args.batch, "precision": precision,
            "rounds": args.rounds, "round_s": args.round_s, "load_before": load_before,
            "load_after": load_after, "peer_missing": missing, "rows": rows,
        }
        (args.out / "peer.json").write_text(json.dumps(record, indent=2))
        (args.out / "peer.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
