"""The GPU benchmark: pairs per hour at 512 px by batch size, and the fraction of the card's peak reached.

bf16 weights and activations in channels-last memory (the engine's `precision: auto` on CUDA) with losses
in fp32. For each batch size, eight different pairs of one size are optimised for --iterations each;
pairs per hour is reported, with the achieved TFLOP/s: the FLOPs of one forward+backward, counted by
torch's FlopCounterMode, times the evaluations run, over the seconds, against the card's dense bf16 peak.
Prints a Markdown table and writes the numbers as JSON to --json.

Usage on a GPU machine: python bench/bench_gpu.py [--size 512] [--batches 1 2 4 8 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import weights_for  # noqa: E402
from bench_throughput import pairs  # noqa: E402
from stylecore import StyleOptions, stylize_batch  # noqa: E402
from stylecore.engine import load_encoder  # noqa: E402
from stylecore.planning import make_plan  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "GB200": 2500.0, "B200": 2250.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def flops_per_evaluation(options: StyleOptions, loaded, height: int, width: int, device) -> float:
    plan = make_plan(options, loaded.preprocessing, height * width, device)
    encoder = load_encoder(plan.spec, loaded, (plan.content_layer, *plan.style_layers), device, torch.bfloat16)
    pixels = torch.rand(1, 3, height, width, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        sum(v.float().square().mean() for v in encoder(pixels).values()).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    loaded, label = weights_for(args.model)
    jobs = pairs(args.size, args.pairs)
    height, width = jobs[0].content.shape[-2:]
    options = StyleOptions(model=args.model, size=args.size, iterations=args.iterations, device=args.device, precision="bf16")
    flops = flops_per_evaluation(options, loaded, height, width, device)
    stylize_batch(jobs[:2], options.merged({"iterations": 3}), weights=loaded, max_batch=2)  # kernels, caches

    rows = []
    samples: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.repeats):
        for batch in args.batches:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            for start in range(0, len(jobs), batch):
                outcomes = stylize_batch(jobs[start : start + batch], options, weights=loaded, max_batch=batch)
                assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[batch].append(time.perf_counter() - began)
    peak = peak_tflops(name)
    base = None
    print(f"{name}, torch {torch.__version__}, {args.model} ({label}), {width}×{height}, {args.iterations} iterations, "
          f"{flops / 1e9:.1f} GFLOP per forward+backward\n")
    print("| batch | pairs per hour | vs batch 1 | achieved TFLOP/s | of the bf16 peak |")
    print("|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        seconds = statistics.median(samples[batch])
        per_hour = len(jobs) * 3600 / seconds
        base = base or per_hour
        achieved = flops * args.iterations * len(jobs) / seconds / 1e12
        share = f"{achieved / peak:.1%}" if peak else "unknown card"
        rows.append({"batch": batch, "seconds": seconds, "pairs_per_hour": per_hour, "tflops": achieved, "peak_share": achieved / peak if peak else None})
        print(f"| {batch} | {per_hour:.0f} | {per_hour / base:.2f}× | {achieved:.1f} | {share} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak_bf16_tflops": peak, "model": args.model, "size": [width, height],
                                         "iterations": args.iterations, "flops_per_evaluation": flops, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
