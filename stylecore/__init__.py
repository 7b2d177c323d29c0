"""stylecore: neural style transfer (Gatys et al.) as a pure torch library.

Bytes and tensors in, tensors out; no Prefect, storage or CLI here.
"""

from .engine import EarlyStop, Job, Result, ScaleRun, stylize, stylize_batch
from .planning import Plan
from .tracking import IterationRecord
from .errors import BadImage, BadOptions, NonFiniteLoss, StyleError, WeightsMismatch, WeightsMissing
from .options import StyleOptions

__all__ = [
    "BadImage",
    "BadOptions",
    "EarlyStop",
    "IterationRecord",
    "NonFiniteLoss",
    "Plan",
    "Result",
    "ScaleRun",
    "StyleError",
    "Job",
    "StyleOptions",
    "WeightsMismatch",
    "WeightsMissing",
    "stylize",
    "stylize_batch",
]
