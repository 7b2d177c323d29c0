"""Typed errors, raised where the problem is found and turned into one line at the edge.

`StyleError` subclasses are deterministic: retrying cannot help, so the flows
fail the pair at once. Anything else (storage, network, CUDA OOM) may be transient.
"""


class StyleError(Exception):
    """A problem with the input that no retry will fix."""


class BadImage(StyleError):
    """Bytes that are not a usable image: not an image, truncated, too large, empty."""


class BadOptions(StyleError):
    """Options that validate one by one but not together (e.g. a layer the model lacks)."""


class WeightsMissing(StyleError):
    """No weights found locally; the message names the command that gets them."""


class WeightsMismatch(StyleError):
    """A weights file whose hash or shapes are not what they should be."""


class NonFiniteLoss(StyleError):
    """The optimisation diverged (NaN or Inf loss); writing its image would write garbage."""
