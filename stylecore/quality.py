"""How a pair came out, in a few cheap figures: from the losses the optimisation logged and the image it made.

No other network and no reference picture: a bulk run needs to point at the few weak or broken
outputs among thousands, not to grade art. Three figures and a verdict:

- style ratio: the style loss of the returned image over that of the start image (the first evaluation,
  at the coarsest scale: the Gram matrices are normalised by C·H·W, so scales compare). The style did
  not take where it stayed near 1.
- content drift: the content loss without its weight, relative to the content features' own energy,
  ‖F − P‖² / ‖P‖² at the content layer (`Result.content_energy`), whatever the weights, the size or the
  start (content or noise: the measure is taken from the targets, not from the start). 0 is the content
  itself; a blank grey image reads 0.79-0.91 against the calibration photos, another photo 0.74-3.2.
- the image, on the 8 bits a PNG keeps: the spread of its luminance (near-constant), the share of channel
  values at 0 or 255 (clipped), and the share of vivid pixels, HSV saturation at least 0.9 at a value of at
  least 0.5 (saturated: colour noise).

Calibrated on 90 runs of squeezenet1_1 (scikit-image's samples, 2-core AMD EPYC without AVX-512; README,
"Quality flags"): each threshold sits between what runs made weak or broken on purpose read (5 iterations,
style_strength 0.01, tv_weight 1000, binary or colour-noise style images) and what default runs read, and
the images were looked at. Recalibrating changes no fingerprint (flows' code version leaves this file out).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .engine import Result
from .images import quantise

STYLE_RATIO_MAX = 0.25  # "weak-style" above; default runs read 0.006-0.15, unstyled-looking ones 0.26 and up
CONTENT_DRIFT_MAX = 1.0  # "content-lost" above: farther from the content than a blank grey image (0.79-0.91)
SPREAD_MIN = 0.04  # "degenerate" below: luminance standard deviation in [0, 1]; a flat output 0.017, photos 0.09+
CLIPPED_MAX = 0.7  # "degenerate" above; a night scene in a starry style 0.51, black-and-white noise 0.92
SATURATED_MAX = 0.25  # "degenerate" above; a photo of a red cup 0.14, colour noise 0.30-0.35
VIVID = 0.9, 0.5  # HSV saturation and value at or above which a pixel counts as saturated

FLAGS = ("weak-style", "content-lost", "degenerate")


@dataclass(frozen=True)
class Quality:
    style_ratio: float  # final style loss / the start image's
    content_drift: float | None  # ‖F − P‖² / ‖P‖² at the content layer; None where the content weight is 0
    spread: float  # standard deviation of the luminance, in [0, 1]
    clipped: float  # share of channel values at 0 or 255
    saturated: float  # share of vivid pixels (see VIVID)
    degenerate: str | None  # why the image is degenerate, in words; None where it is not
    flags: tuple[str, ...]  # of FLAGS, in that order; empty: nothing to look at

    def as_record(self) -> dict:
        """As meta.json and report.json keep it."""
        return {
            "style_ratio": round(self.style_ratio, 4),
            "content_drift": None if self.content_drift is None else round(self.content_drift, 4),
            "spread": round(self.spread, 4),
            "clipped": round(self.clipped, 4),
            "saturated": round(self.saturated, 4),
            "degenerate": self.degenerate,
            "flags": list(self.flags),
        }

    @classmethod
    def from_record(cls, record: dict) -> "Quality":
        """What `as_record` wrote, as read back from meta.json or a report."""
        return cls(**{**record, "flags": tuple(record["flags"])})


def assess(result: Result) -> Quality:
    """The figures of one result, and the flags its thresholds raise."""
    start, final = result.history[0], result.final
    style_ratio = final.style / start.style if start.style > 0 else 0.0
    scale = result.plan.content_weight * result.content_energy
    content_drift = final.content / scale if scale > 0 else None
    spread, clipped, saturated = image_figures(result.image)
    degenerate = degenerate_reason(spread, clipped, saturated)
    flags = tuple(
        flag
        for flag, raised in zip(
            FLAGS,
            (style_ratio > STYLE_RATIO_MAX, content_drift is not None and content_drift > CONTENT_DRIFT_MAX, degenerate is not None),
        )
        if raised
    )
    return Quality(style_ratio, content_drift, spread, clipped, saturated, degenerate, flags)


def image_figures(image: Tensor) -> tuple[float, float, float]:
    """(spread, clipped, saturated) of a (1, 3, H, W) image in [0, 1], measured on the 8 bits a PNG keeps."""
    pixels = quantise(image)[0].float()  # (3, H, W) in 0-255
    luminance = (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]) / 255
    clipped = ((pixels == 0) | (pixels == 255)).float().mean().item()
    value, low = pixels.amax(dim=0), pixels.amin(dim=0)
    vivid = (value - low >= VIVID[0] * value) & (value >= VIVID[1] * 255) & (value > 0)
    return luminance.std().item(), clipped, vivid.float().mean().item()


def degenerate_reason(spread: float, clipped: float, saturated: float) -> str | None:
    if spread < SPREAD_MIN:
        return f"near-constant (luminance spread {spread:.3f})"
    if clipped > CLIPPED_MAX:
        return f"clipped ({clipped:.0%} of values at 0 or 255)"
    if saturated > SATURATED_MAX:
        return f"saturated ({saturated:.0%} of pixels vivid colours)"
    return None
