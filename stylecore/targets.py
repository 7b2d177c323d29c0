"""What the image is pulled toward: Gram targets of style images, feature targets of content images.

A bulk run stylises many contents with few styles, so a style's Grams (for a
given network, weights, layers and size) are computed once per worker process
and reused by every pair that shares them. The key is a digest of the style's
pixels as the network sees them, so resizing, colour matching or a different
file with the same pixels all key correctly without trusting file names.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from .features import Encoder
from .losses import gram_matrix


def pixels_digest(image: Tensor) -> str:
    data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


class StyleTargetCache:
    """Least-recently-used Gram targets, keyed by (pixels, network, weights, layers, device, precision)."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[Tensor, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def grams(self, encoder: Encoder, weights_sha256: str, layers: Sequence[str], style: Tensor) -> tuple[Tensor, ...]:
        """One (C, C) fp32 Gram per layer of a (1, 3, H, W) style image."""
        key = (
            pixels_digest(style), tuple(style.shape), encoder.spec.name, weights_sha256, encoder.preprocessing,
            tuple(layers), str(style.device), encoder.compute_dtype,
        )
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        with torch.no_grad():
            feats = encoder(style)
            grams = tuple(gram_matrix(feats[layer].float())[0] for layer in layers)
        with self._lock:
            self._entries[key] = grams
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return grams

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


def blended_grams(per_style: Sequence[Sequence[Tensor]], weights: Sequence[float]) -> tuple[Tensor, ...]:
    """Σ wᵢ·Gᵢ / Σ wᵢ per layer: several styles as one target (jcjohnson/neural-style's style blending)."""
    total = float(sum(weights))
    return tuple(
        sum(w / total * grams[i] for grams, w in zip(per_style, weights)) for i in range(len(per_style[0]))
    )


def content_features(encoder: Encoder, layer: str, content: Tensor) -> Tensor:
    with torch.no_grad():
        return encoder(content)[layer].float()


style_targets = StyleTargetCache()  # one per worker process
