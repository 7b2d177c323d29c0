"""Peak memory of an optimisation against the estimate made before it, at several output sizes.

Each row runs in a fresh process (peak RSS is per process): load the weights, note the resident
size, optimise a few iterations, read the peak. On CUDA the allocator's peak is read instead.
Usage: python bench/bench_memory.py [--sizes 512 1024 2048] [--model vgg16] [--iterations 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, size: int, iterations: int, batch: int, device: str, limit_gb: float | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from bench_engine import inputs, weights_for
    from stylecore import Job, StyleOptions, stylize_batch

    loaded, _ = weights_for(model)
    content, style = inputs(size)
    options = StyleOptions(model=model, size=size, iterations=iterations, device=device)
    stylize_batch([Job(content[..., :64, :64], [(style[..., :64, :64], 1.0)])], options.merged({"iterations": 1}), weights=loaded)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    limit = int(limit_gb * 2**30) if limit_gb else None
    (result, *_) = stylize_batch([Job(content, [(style, 1.0)])] * batch, options, weights=loaded, max_batch=batch, memory_limit=limit)
    if isinstance(result, Exception):
        raise result
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    final = result.scales[-1]
    return {"model": model, "size": size, "pixels": list(content.shape[-2:]), "batch": batch, "precision": result.plan.precision,
            "peak_bytes": peak, "estimate_bytes": final.estimate_bytes, "tile": final.tile,
            "scales": [list(s.size) for s in result.scales], "seconds": round(result.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-limit-gb", type=float, help="plan for this much memory (tiles the sizes that do not fit)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.iterations, args.batch, args.device, args.memory_limit_gb)))
        return
    print("| model | size | batch | precision | scales | tiles | estimate | measured peak | estimate / peak | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--model", args.model, "--iterations", str(args.iterations),
                   "--batch", str(args.batch), "--device", args.device]
        if args.memory_limit_gb:
            command += ["--memory-limit-gb", str(args.memory_limit_gb)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        scales = " → ".join(str(max(s)) for s in row["scales"])
        print(f"| {row['model']} | {row['pixels'][1]}×{row['pixels'][0]} | {row['batch']} | {row['precision']} | {scales} | {row['tile'] or 'none'} "
              f"| {gib(row['estimate_bytes'])} | {gib(row['peak_bytes'])} | {row['estimate_bytes'] / row['peak_bytes']:.2f} | {row['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
