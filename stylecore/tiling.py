"""Optimising an image too large for the device, one tile at a time.

Each iteration cuts the image into tiles, and for each tile runs the network on
that piece alone, so peak memory is that of one tile. Every tile's gradient lands
in the one full-size image, and one optimiser step follows. The Gatys losses
split cleanly: the content loss is a sum over positions, so the tiles' content
losses add up to the image's; the normalised Gram is an average over positions,
so a tile's style loss is weighted by its share of the area; the total variation
is computed on the whole image, seams included.

Tile edges would show as seams if they stayed put, so the grid is shifted by a
random offset every iteration. Because the objective moves with the grid, the
tiled scale uses Adam (L-BFGS's line search and curvature history assume one
fixed objective). Content targets are computed per tile, on the same crop of the
content image, so both sides of the comparison see the same edges.

After each step the whole state (image, Adam's moments, the grid's random generator) can be
handed out (`on_boundary`) and a later call can go on from it (`resume`): see `checkpoint.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import NonFiniteLoss
from .features import Encoder
from .losses import content_loss, style_loss, tv_loss
from .targets import content_features
from .checkpoint import Progress
from .tracking import BestImage, Convergence, IterationRecord

TILED_LR = 0.02  # Adam's step on [0, 1] pixels; the scale before has done the coarse work


def tile_bounds(length: int, tile: int, offset: int) -> list[tuple[int, int]]:
    """Pieces of [0, length) cut every `tile` pixels from `offset`; pieces under half a tile merge into a neighbour."""
    if length <= tile:
        return [(0, length)]
    bounds = [0]
    for cut in range(offset % tile, length, tile):
        if cut - bounds[-1] >= tile // 2 and length - cut >= tile // 2:
            bounds.append(cut)
    if len(bounds) == 1 and length > tile * 3 // 2:  # every cut fell near an end: cut once, still shifted
        bounds.append(min(max(offset % tile, tile // 2), length - tile // 2))
    bounds.append(length)
    return list(zip(bounds, bounds[1:]))


def optimise_tiled(
    encoder: Encoder,
    plan,
    content: Tensor,
    grams: tuple[Tensor, ...],
    start: Tensor,
    *,
    tile: int,
    iterations: int,
    seed: int,
    first_iteration: int,
    scale: int,
    clock: Callable[[], float],
    on_record: Callable[[IterationRecord], None] | None = None,
    early_stop: tuple[float | None, int] = (None, 20),
    lr: float = TILED_LR,
    snapshot_every: int | None = None,
    resume: Progress | None = None,
    on_boundary: Callable[[int, Callable[[], Progress]], None] | None = None,
) -> tuple[BestImage, list[IterationRecord], int | None, float]:
    """The best image, every evaluation's record, the early-stop iteration (or None), and the content targets'
    energy Σ P² over the last grid's tiles (what the content loss is measured against, see `Result`).
    With `resume`, go on from that state (`start` is not used); `on_boundary(evaluations so far, capture)`
    is offered the state after every step."""
    height, width = content.shape[-2:]
    pixels = (start if resume is None else resume.pixels).detach().clone().contiguous().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    best, history, convergence = BestImage(snapshot_every), [], Convergence(*early_stop)
    energy, begin = 0.0, 0
    if resume is not None:
        saved = resume.optimiser
        optimizer.state[pixels] = {k: v.clone() for k, v in saved["adam"].items()}
        generator.set_state(saved["rng"])
        energy, begin = saved["energy"], saved["step"]
        history = list(resume.history)
        best.restore(resume.best, resume.best_pixels, resume.snapshots)
        convergence.restore(resume.convergence)

    def capture(step: int) -> Progress:
        state = {
            "step": step, "adam": {k: v.clone() for k, v in optimizer.state[pixels].items()},
            "rng": generator.get_state(), "energy": energy,
        }
        return Progress(pixels.detach().clone(), state, list(history), best.record, best.pixels, list(best.snapshots), convergence.state())

    for step in range(begin, iterations):
        optimizer.zero_grad(set_to_none=True)
        dy, dx = torch.randint(0, tile, (2,), generator=generator).tolist()
        c_total = s_total = energy = 0.0
        for y0, y1 in tile_bounds(height, tile, dy):
            for x0, x1 in tile_bounds(width, tile, dx):
                target = content_features(encoder, plan.content_layer, content[..., y0:y1, x0:x1])
                energy += target.square().sum().item()
                feats = {name: value.float() for name, value in encoder(pixels[..., y0:y1, x0:x1]).items()}
                share = (y1 - y0) * (x1 - x0) / (height * width)
                c = content_loss(plan.content_weight, feats[plan.content_layer], target)
                s = share * style_loss(feats, plan.style_layers, grams, plan.style_weights)
                (c + s).backward()
                c_total += c.item()
                s_total += s.item()
                del feats, target, c, s
        t = tv_loss(pixels, plan.tv_weight)
        t.backward()
        total = c_total + s_total + t.item()
        if not math.isfinite(total):
            raise NonFiniteLoss(f"loss became {total} at iteration {first_iteration + step} (tiled); lower the weights")
        record = IterationRecord(first_iteration + step, c_total, s_total, t.item(), total, clock(), scale)
        history.append(record)
        best.offer(record, pixels)
        if on_record is not None:
            on_record(record)
        if convergence.update(record):
            break
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
        if on_boundary is not None and step + 1 < iterations:
            on_boundary(len(history), lambda: capture(step + 1))
    return best, history, convergence.stopped_at, energy
