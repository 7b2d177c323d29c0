"""Seconds per iteration: the engine against the tutorial-style baseline, side by side in one run.

Same model, weights, layers, loss weights, image size and optimiser; each row is
measured in this one process, so the ratios are what to read, not the seconds.
Usage: python bench/bench_engine.py [--sizes 256 512] [--iterations 20] [--models vgg16 vgg19 squeezenet1_1]
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

from stylecore import StyleOptions, images, stylize, weights  # noqa: E402
from stylecore.engine import load_weights  # noqa: E402
from stylecore.planning import cpu_supports_bf16, make_plan  # noqa: E402
from stylecore.features import MODELS, Encoder  # noqa: E402

import tutorial_baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # only for the README's pictures, where present; weights come from the package


def inputs(size: int):
    if (SHARED / "images" / "tubingen.jpg").exists():
        content = (SHARED / "images" / "tubingen.jpg").read_bytes()
        style = (SHARED / "images" / "starry_night.jpg").read_bytes()
    else:
        from flows.demo_images import sample_png

        content, style = sample_png("chelsea"), sample_png("hubble_deep_field")
    return images.load(content, size), images.load(style, size)


def weights_for(model: str):
    """Real weights where we have them; random ones (same cost per iteration) otherwise."""
    packaged = weights.packaged_file(model)
    if packaged is not None and packaged.is_file():
        return weights.load_weights_file(packaged, expected_sha256=weights.PACKAGED[model][1]), "packaged Caffe"
    try:
        return load_weights(StyleOptions(model=model)), "pretrained"
    except Exception:
        torch.manual_seed(0)
        state = MODELS[model].build().state_dict()
        return weights.LoadedWeights(state, "random", "caffe", "random init"), "random init (timing only)"


def baseline(model: str, loaded, size: int, iterations: int):
    totals, seconds = baseline_run(model, loaded, size, iterations)
    return seconds / len(totals), totals[iterations - 1]


def baseline_run(model: str, loaded, size: int, iterations: int) -> tuple[list[float], float]:
    """The tutorial-style loop on the same layers, weights and loss weights: its per-evaluation totals and seconds."""
    content, style = inputs(size)
    plan = make_plan(StyleOptions(model=model), loaded.preprocessing, content.shape[-1] * content.shape[-2], torch.device("cpu"))
    spec = MODELS[model]
    features = spec.build()
    weights.install_state_dict(spec, features, loaded)
    encoder = Encoder(spec, features, loaded.preprocessing, [plan.content_layer, *plan.style_layers])
    net, cl, sl = tutorial_baseline.build(
        features, spec.layer_names, encoder.mean[0, :, 0, 0], encoder.std[0, :, 0, 0], content, style,
        plan.content_layer, list(plan.style_layers), plan.content_weight, list(plan.style_weights),
    )
    _, totals, seconds = tutorial_baseline.run(net, cl, sl, content, iterations, plan.tv_weight)
    return totals, seconds


def engine(model: str, loaded, size: int, iterations: int, precision: str):
    content, style = inputs(size)
    options = StyleOptions(model=model, size=size, iterations=iterations, precision=precision, device="cpu")
    stylize(content, style, options.merged({"iterations": 2}), weights=loaded)  # warm the encoder cache and kernels
    began = time.perf_counter()
    result = stylize(content, style, options, weights=loaded)
    return (time.perf_counter() - began) / iterations, result.final.total


def quality(model: str, loaded, size: int, iterations: int) -> tuple[float, float]:
    """Total loss after a whole run in fp32 and in bf16: does autocast land where fp32 does?"""
    content, style = inputs(size)
    options = StyleOptions(model=model, size=size, iterations=iterations, device="cpu")
    fp32 = stylize(content, style, options.merged({"precision": "fp32"}), weights=loaded).final.total
    bf16 = stylize(content, style, options.merged({"precision": "bf16"}), weights=loaded).final.total
    return fp32, bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "vgg19", "squeezenet1_1"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--iterations", type=int, default=10, help="iterations per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--quality-iterations", type=int, default=100)
    args = parser.parse_args()
    bf16 = cpu_supports_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16: {bf16}; "
          f"median of {args.repeats} interleaved runs of {args.iterations} iterations\n")
    print("| model | weights | size | baseline s/it | engine fp32 s/it | engine bf16 s/it | fp32 speed-up | bf16 speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        loaded, label = weights_for(model)
        for size in args.sizes:
            samples: dict[str, list[float]] = {"base": [], "fp32": [], "bf16": []}
            for _ in range(args.repeats):  # interleaved, so a busy moment hurts every column alike
                samples["base"].append(baseline(model, loaded, size, args.iterations)[0])
                samples["fp32"].append(engine(model, loaded, size, args.iterations, "fp32")[0])
                if bf16:
                    samples["bf16"].append(engine(model, loaded, size, args.iterations, "bf16")[0])
            base_s, fp32_s = statistics.median(samples["base"]), statistics.median(samples["fp32"])
            bf16_s = statistics.median(samples["bf16"]) if bf16 else float("nan")
            print(
                f"| {model} | {label} | {size} | {base_s:.3f} | {fp32_s:.3f} | {bf16_s:.3f} | "
                f"{base_s / fp32_s:.2f}× | {base_s / bf16_s:.2f}× |",
                flush=True,
            )
    if bf16 and args.quality_iterations:
        print("\n| model | size | iterations | final loss fp32 | final loss bf16 | bf16 / fp32 |")
        print("|---|---:|---:|---:|---:|---:|")
        for model in args.models:
            loaded, label = weights_for(model)
            if label.startswith("random"):
                continue  # a loss on random features says nothing about quality
            fp32, bf = quality(model, loaded, 256, args.quality_iterations)
            print(f"| {model} | 256 | {args.quality_iterations} | {fp32:.5g} | {bf:.5g} | {bf / fp32:.3f} |", flush=True)


if __name__ == "__main__":
    main()
