"""Seconds per iteration: the engine against the tutorial-style baseline, side by side in one run.

Same model, weights, layers, loss weights, image size and optimiser; each row is
measured in this one process, so the ratios are what to read, not the seconds.
Usage: python bench/bench_engine.py [--sizes 256 512] [--iterations 20] [--models vgg16 vgg19 squeezenet1_1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stylecore import StyleOptions, images, stylize, weights  # noqa: E402
from stylecore.engine import load_weights, make_plan  # noqa: E402
from stylecore.features import MODELS, Encoder  # noqa: E402

import tutorial_baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


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
    if model == "squeezenet1_1" and (SHARED / "models" / "squeezenet1_1-caffe-features-rgb.pth").exists():
        return weights.load_weights_file(SHARED / "models" / "squeezenet1_1-caffe-features-rgb.pth"), "shared Caffe"
    try:
        return load_weights(StyleOptions(model=model)), "pretrained"
    except Exception:
        torch.manual_seed(0)
        state = MODELS[model].build().state_dict()
        return weights.LoadedWeights(state, "random", "caffe", "random init"), "random init (timing only)"


def baseline(model: str, loaded, size: int, iterations: int):
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
    return seconds / len(totals), totals[iterations - 1]


def engine(model: str, loaded, size: int, iterations: int, precision: str):
    content, style = inputs(size)
    options = StyleOptions(model=model, size=size, iterations=iterations, precision=precision, device="cpu")
    stylize(content, style, options.merged({"iterations": 2}), weights=loaded)  # warm the encoder cache and kernels
    began = time.perf_counter()
    result = stylize(content, style, options, weights=loaded)
    return (time.perf_counter() - began) / iterations, result.final.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "vgg19", "squeezenet1_1"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16: {bf16}\n")
    print("| model | weights | size | baseline s/it | engine fp32 s/it | engine bf16 s/it | fp32 speed-up | bf16 speed-up | bf16 final loss / fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        loaded, label = weights_for(model)
        for size in args.sizes:
            base_s, base_loss = baseline(model, loaded, size, args.iterations)
            fp32_s, fp32_loss = engine(model, loaded, size, args.iterations, "fp32")
            bf16_s, bf16_loss = engine(model, loaded, size, args.iterations, "bf16") if bf16 else (float("nan"), float("nan"))
            print(
                f"| {model} | {label} | {size} | {base_s:.3f} | {fp32_s:.3f} | {bf16_s:.3f} | "
                f"{base_s / fp32_s:.2f}× | {base_s / bf16_s:.2f}× | {bf16_loss / fp32_loss:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
