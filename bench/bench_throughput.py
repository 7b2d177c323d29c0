"""Throughput: time to reach the tutorial baseline's loss, and pairs per hour by batch size, in one run.

1. Time to equal loss. The tutorial-style loop (bench/tutorial_baseline.py) runs N iterations; its lowest
   loss is the target. The engine then runs until its own loss at the output size is at or below that
   target, one scale and coarse-to-fine (scales=2), and the seconds to get there are compared.
2. Pairs per hour. Eight different pairs of one size, optimised one at a time, four at a time and eight at
   a time, interleaved and repeated; the median is reported.

Read the ratios, not the seconds. Usage: python bench/bench_throughput.py [--sizes 256 512] [--models vgg16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import SHARED, baseline_run, inputs, weights_for  # noqa: E402
from stylecore import Job, StyleOptions, images, stylize, stylize_batch  # noqa: E402


class _Reached(Exception):
    pass


def seconds_to_reach(target: float, options: StyleOptions, content, style, loaded) -> tuple[float | None, int]:
    """Seconds from the start until the loss at the output size first reaches `target` (None: never)."""
    final_scale = options.scales - 1
    seen = []

    def check(record):
        seen.append(record)
        if record.scale == final_scale and record.total <= target:
            raise _Reached  # ends the run: an error of this image, raised by stylize

    try:
        stylize(content, style, options, on_iteration=check, weights=loaded)
    except _Reached:
        return seen[-1].seconds, seen[-1].iteration
    return None, len(seen)


def time_to_equal_loss(model: str, size: int, iterations: int) -> None:
    loaded, label = weights_for(model)
    content, style = inputs(size)
    totals, seconds = baseline_run(model, loaded, size, iterations)
    target = min(totals)
    base = StyleOptions(model=model, size=size, iterations=iterations * 3, device="cpu")
    single, single_its = seconds_to_reach(target, base, content, style, loaded)
    multi, multi_its = seconds_to_reach(target, base.merged({"scales": 2, "coarse_iterations": iterations}), content, style, loaded)

    def cell(value, its):
        return f"{value:.1f} s ({its} it) | {seconds / value:.2f}×" if value else f"not reached in {its} it | –"

    print(f"| {model} ({label}) | {size} | {target:.4g} | {seconds:.1f} s ({iterations} it) | {cell(single, single_its)} | {cell(multi, multi_its)} |", flush=True)


def pairs(size: int, count: int = 8):
    names = ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg", "composition_vii.jpg")
    if (SHARED / "images" / names[0]).exists():
        pictures = [images.load((SHARED / "images" / n).read_bytes(), size) for n in names]
    else:
        from flows.demo_images import sample_png

        pictures = [images.load(sample_png(n), size) for n in ("chelsea", "coffee", "hubble_deep_field", "brick")]
    height, width = pictures[0].shape[-2:]
    same = [images.to_tensor(images.to_image(p).resize((width, height))) for p in pictures]  # one output size
    return [Job(same[i % 4].roll(i // 4 * 17, -1), [(pictures[(i + 1) % 4], 1.0)]) for i in range(count)]


def pairs_per_hour(model: str, size: int, iterations: int, batches: list[int], repeats: int) -> None:
    loaded, label = weights_for(model)
    jobs = pairs(size)
    options = StyleOptions(model=model, size=size, iterations=iterations, device="cpu")
    stylize_batch(jobs[:2], options.merged({"iterations": 2}), weights=loaded, max_batch=2)  # warm up
    samples: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):
        for batch in batches:  # interleaved, so a busy moment hurts every column alike
            began = time.perf_counter()
            for start in range(0, len(jobs), batch):
                outcomes = stylize_batch(jobs[start : start + batch], options, weights=loaded, max_batch=batch)
                assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            samples[batch].append(time.perf_counter() - began)
    per_hour = {b: len(jobs) * 3600 / statistics.median(s) for b, s in samples.items()}
    cells = " | ".join(f"{per_hour[b]:.0f} ({per_hour[b] / per_hour[batches[0]]:.2f}×)" for b in batches)
    print(f"| {model} ({label}) | {size} | {iterations} | {cells} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--baseline-iterations", type=int, nargs="+", default=[100, 50], help="per size, in order")
    parser.add_argument("--batch-models", nargs="+", default=["vgg16", "squeezenet1_1"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-iterations", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")
    print("| model | size | baseline's best loss | baseline | engine, one scale | speed-up | engine, 2 scales | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for size, iterations in zip(args.sizes, args.baseline_iterations):
            time_to_equal_loss(model, size, iterations)
    header = " | ".join(f"batch {b}" for b in args.batches)
    print(f"\nPairs per hour, {len(pairs(32))} pairs of one size (ratio to batch {args.batches[0]}):\n")
    print(f"| model | size | iterations | {header} |")
    print("|---|---:|---:|" + "---:|" * len(args.batches))
    for model in args.batch_models:
        pairs_per_hour(model, args.batch_size, args.batch_iterations, args.batches, args.repeats)


if __name__ == "__main__":
    main()
