"""What a checkpoint costs: seconds per iteration against the seconds a full checkpoint takes to write.

A full checkpoint is the largest a pair's state gets: L-BFGS's whole history (50 remembered steps, two
images each) at the output size. It is made at the size of the pair whose iterations are timed and written by the flow's own writer
(flows/checkpoints.py: a background thread streaming `torch.save` through a CRC-32 into an atomic write,
fsynced, to a local folder), `--writes` times. The writer runs beside the optimisation, so on a machine whose cores the
optimisation keeps busy its seconds are what a checkpoint can take from it at most: the cost printed is
those seconds over the optimisation's seconds for `--every` iterations. `--end-to-end` also optimises the
pair with and without checkpoints and compares the two runs' seconds (and checks their images are equal).
Weights are random unless --weights names a file: an iteration and a checkpoint cost the same whatever
their values.
Usage: python bench/bench_checkpoint.py [--model vgg16] [--size 512] [--every 20] [--end-to-end --iterations 80]
"""

from __future__ import annotations

import argparse
import atexit
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import checkpoints, storage  # noqa: E402
from flows.manifest import PairSpec  # noqa: E402
from stylecore import StyleOptions, images, weights  # noqa: E402
from stylecore.engine import Job, load_weights, stylize_batch  # noqa: E402
from stylecore.checkpoint import Progress, State  # noqa: E402
from stylecore.features import MODELS  # noqa: E402
from stylecore.memory import LBFGS_HISTORY  # noqa: E402
from stylecore.planning import precision_choice  # noqa: E402
from stylecore.tracking import IterationRecord  # noqa: E402


def inputs(size: int):
    from flows.demo_images import sample_png

    return images.load(sample_png("chelsea"), size), images.load(sample_png("hubble_deep_field"), size)


def weights_for(model: str, path: str | None):
    if path:
        return load_weights(StyleOptions(model=model, weights=path)), Path(path).name
    torch.manual_seed(0)
    return weights.LoadedWeights(MODELS[model].build().state_dict(), "random", "caffe", "random init"), "random init"


class TimedWriter(checkpoints.Writer):
    """The flow's writer, with each checkpoint's write timed (serialising, checksum and storage: one stream)."""

    def __init__(self):
        super().__init__()
        self.timings: list[tuple[int, int, float]] = []  # iteration, bytes, seconds

    def _loop(self) -> None:
        real = checkpoints.write

        def timed(pair, fingerprint, state, cancelled=None):
            began = time.perf_counter()
            real(pair, fingerprint, state, cancelled)
            size = storage.info(checkpoints.uri(pair))["size"]
            self.timings.append((state.iteration, size, time.perf_counter() - began))

        checkpoints.write = timed
        try:
            super()._loop()
        finally:
            checkpoints.write = real


def run(job, options, loaded, folder: str | None):
    writer = TimedWriter() if folder else None
    pair = PairSpec("bench", "c", "s", options, folder) if folder else None
    began = time.perf_counter()
    (result,) = stylize_batch(
        [job], options, weights=loaded,
        on_checkpoint=(lambda i, state: writer.submit(pair, "bench", state)) if writer else None,
    )
    optimised = time.perf_counter() - began
    if writer:
        writer.close(flush=True)
    if isinstance(result, Exception):
        raise result
    return result, optimised, writer.timings if writer else []


def full_state(height: int, width: int) -> State:
    """An L-BFGS state with its whole history, at this size."""
    numel = 3 * height * width
    image = torch.rand(1, 3, height, width)

    def vector():
        return torch.randn(numel)

    optimiser = {
        "loss": 1.0, "current_evals": 60, "n_iter": 55, "flat_grad": vector(), "d": vector(), "t": 1.0,
        "old_dirs": [vector() for _ in range(LBFGS_HISTORY)], "old_stps": [vector() for _ in range(LBFGS_HISTORY)],
        "ro": [torch.tensor(1.0) for _ in range(LBFGS_HISTORY)], "H_diag": torch.tensor(1.0), "prev_flat_grad": vector(),
        "prev_loss": 1.0, "state_n_iter": 55, "func_evals": 60,
    }
    history = [IterationRecord(i, 1.0, 1.0, 1.0, 3.0, float(i), 0) for i in range(1, 61)]
    progress = Progress(image.clone(), optimiser, history, history[-1], image.clone(), [], (3.0, 0, None))
    return State(0, (height, width), "lbfgs", image, progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=512, help="the output's longer side")
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--timed-iterations", type=int, default=6, help="iterations timed for seconds per iteration")
    parser.add_argument("--writes", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--iterations", type=int, default=80, help="with --end-to-end")
    parser.add_argument("--weights", default=None, help="a weights file (default: random weights)")
    parser.add_argument("--out", default=None, help="folder for the checkpoints (default: a temporary one)")
    args = parser.parse_args()

    loaded, label = weights_for(args.model, args.weights)
    content, style = inputs(args.size)
    job = Job(content, [(style, 1.0)])
    options = StyleOptions(model=args.model, size=args.size, iterations=args.timed_iterations, device="cpu", checkpoint_every=0)
    stylize_batch([job], options.merged({"iterations": 2}), weights=loaded)  # warm the encoder and the kernels
    _, seconds, _ = run(job, options, loaded, None)
    per_iteration = seconds / args.timed_iterations
    folder = args.out or tempfile.mkdtemp(prefix="stylize-bench-checkpoint-")
    if not args.out:
        atexit.register(shutil.rmtree, folder, True)  # a full checkpoint is hundreds of MiB

    writer = TimedWriter()
    pair = PairSpec("bench", "c", "s", options, folder)
    for _ in range(args.writes):
        writer.submit(pair, "bench", full_state(*content.shape[-2:]))
        while len(writer.timings) < _ + 1:
            time.sleep(0.01)
    writer.close(flush=True)

    precision, _ = precision_choice("auto", torch.device("cpu"), args.model)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; {args.model} ({label}), {content.shape[-1]}×{content.shape[-2]}, {precision}")
    print(f"seconds per iteration: {per_iteration:.3f} (L-BFGS, {args.timed_iterations} iterations)")
    print(f"| full checkpoint at {content.shape[-1]}×{content.shape[-2]} | MiB | seconds to write | cost at every {args.every} |")
    print("|---|---:|---:|---:|")
    for n, (_, size, seconds) in enumerate(writer.timings, 1):
        print(f"| write {n} | {size / 2**20:.0f} | {seconds:.3f} | {100 * seconds / (args.every * per_iteration):.2f}% |")
    median = statistics.median(t[2] for t in writer.timings)
    print(f"median cost: {100 * median / (args.every * per_iteration):.2f}% of {args.every} iterations; "
          f"every {max(1, round(median / (0.02 * per_iteration)))} iterations would cost 2%")

    if args.end_to_end:
        options = options.merged({"iterations": args.iterations, "checkpoint_every": args.every})
        with_checkpoints, seconds_with, timings = run(job, options, loaded, folder)
        without, seconds_without, _ = run(job, options.merged({"checkpoint_every": 0}), loaded, None)
        assert torch.equal(with_checkpoints.image, without.image)  # a checkpoint changes nothing
        print(f"end to end, {args.iterations} iterations: {seconds_with:.1f} s with {len(timings)} checkpoints "
              f"(largest {max((t[1] for t in timings), default=0) / 2**20:.0f} MiB), {seconds_without:.1f} s without "
              f"({100 * (seconds_with / seconds_without - 1):+.2f}%)")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + ("" if "avx512" in open("/proc/cpuinfo").read() else " (no AVX-512)")
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
