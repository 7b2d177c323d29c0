"""Colour control (Gatys et al., "Preserving Color in Neural Artistic Style Transfer", 2016).

Plain style transfer paints the content in the style's palette. Two ways to keep
the content's colours instead:

- *luminance*: transfer on luminance only. Both images go to YIQ; the style's
  luminance is matched to the content's mean and spread, the optimisation runs
  on grey images, and the result's luminance is joined to the content's I and Q.
- *histogram*: give the style image the content's colour histogram first
  (per channel, scikit-image's `match_histograms`), then transfer as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _apply(matrix: Tensor, image: Tensor) -> Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def rgb_to_yiq(image: Tensor) -> Tensor:
    return _apply(_RGB_TO_YIQ, image)


def yiq_to_rgb(image: Tensor) -> Tensor:
    return _apply(_YIQ_TO_RGB, image)


def luminance(image: Tensor) -> Tensor:
    """(N, 3, H, W) RGB → (N, 1, H, W) Y."""
    return rgb_to_yiq(image)[:, :1]


def grey(y: Tensor) -> Tensor:
    """A luminance channel as the 3-channel image a network expects."""
    return y.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def luminance_inputs(content: Tensor, style: Tensor) -> tuple[Tensor, Tensor]:
    """Grey content and grey style, the style's luminance shifted and scaled to the content's mean and spread."""
    yc, ys = luminance(content), luminance(style)
    ys = (ys - ys.mean()) / ys.std().clamp_min(1e-6) * yc.std() + yc.mean()
    return grey(yc), grey(ys)


def join_luminance(stylised: Tensor, content: Tensor) -> Tensor:
    """The stylised image's luminance with the content's I and Q: the content's colours, the style's strokes."""
    yiq = rgb_to_yiq(content)
    yiq = torch.cat([luminance(stylised), yiq[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0, 1)


def match_histograms(style: Tensor, content: Tensor) -> Tensor:
    """The style image with the content's per-channel colour histogram."""
    from skimage.exposure import match_histograms as _match

    def as_array(image: Tensor) -> np.ndarray:
        return image[0].permute(1, 2, 0).double().cpu().numpy()

    matched = _match(as_array(style), as_array(content), channel_axis=-1)
    return torch.from_numpy(matched).float().permute(2, 0, 1).unsqueeze(0).clamp(0, 1).to(style.device).contiguous()
