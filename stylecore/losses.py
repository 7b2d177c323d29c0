"""The seed's four losses (Gatys et al., as in the course report), exactly.

All sums, never means: the weights in `StyleOptions` are calibrated to these
formulas, so changing a reduction silently changes every default. Batched
per-sample variants live beside them and reduce to these for a batch of one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def content_loss(content_weight: float, content_current: Tensor, content_original: Tensor) -> Tensor:
    """w · Σ (F − P)² over every element of two (1, C, H, W) feature maps."""
    return content_weight * (content_current - content_original).pow(2).sum()


def gram_matrix(features: Tensor, normalize: bool = True) -> Tensor:
    """(N, C, H, W) → (N, C, C): G = F·Fᵀ with F as (N, C, H·W); / (C·H·W) when normalising."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    gram = torch.bmm(flat, flat.transpose(1, 2))
    if normalize:
        gram = gram / (c * h * w)
    return gram


def style_loss(
    feats: Mapping[str, Tensor] | Sequence[Tensor],
    style_layers: Sequence,
    style_targets: Sequence[Tensor],
    style_weights: Sequence[float],
) -> Tensor:
    """Σ_i style_weights[i] · Σ (gram_matrix(feats[style_layers[i]]) − style_targets[i])²."""
    total = torch.zeros((), dtype=style_targets[0].dtype, device=style_targets[0].device)
    for layer, target, weight in zip(style_layers, style_targets, style_weights, strict=True):
        total = total + weight * (gram_matrix(feats[layer]) - target).pow(2).sum()
    return total


def tv_loss(img: Tensor, tv_weight: float) -> Tensor:
    """w · (Σ vertical differences² + Σ horizontal differences²), over all channels."""
    down = (img[:, :, 1:, :] - img[:, :, :-1, :]).pow(2).sum()
    across = (img[:, :, :, 1:] - img[:, :, :, :-1]).pow(2).sum()
    return tv_weight * (down + across)


# --- per-sample variants: shape (N,) instead of a scalar, for batched optimisation ---


def content_loss_per_sample(content_weight: float, current: Tensor, original: Tensor) -> Tensor:
    return content_weight * (current - original).pow(2).flatten(1).sum(1)


def style_loss_per_sample(
    feats: Mapping[str, Tensor],
    style_layers: Sequence,
    style_targets: Sequence[Tensor],
    style_weights: Sequence[float],
) -> Tensor:
    total = None
    for layer, target, weight in zip(style_layers, style_targets, style_weights, strict=True):
        term = weight * (gram_matrix(feats[layer]) - target).pow(2).flatten(1).sum(1)
        total = term if total is None else total + term
    return total


def tv_loss_per_sample(img: Tensor, tv_weight: float) -> Tensor:
    down = (img[:, :, 1:, :] - img[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    across = (img[:, :, :, 1:] - img[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return tv_weight * (down + across)
