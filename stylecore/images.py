"""Bytes ↔ tensors: decode anything Pillow reads into [0, 1] RGB, encode 8-bit PNG.

Decoding is where untrusted input meets the engine, so every failure becomes a
`BadImage` with a one-line reason, and the pixel count is checked from the
header before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import BadImage

MAX_PIXELS = 100_000_000  # ≈ 10k × 10k; larger headers are refused before decoding


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB: alpha flattened onto white, 16/32-bit scaled to 8-bit, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def decode(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes → upright RGB Pillow image (first frame of an animation)."""
    if not data:
        raise BadImage(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(f"{name}: {width}×{height} pixels is over the limit of {max_pixels:,}")
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{name}: header claims more pixels than the limit of {max_pixels:,} (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"{name}: damaged image ({exc})") from None


def scaled_size(width: int, height: int, longer_side: int) -> tuple[int, int]:
    scale = longer_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_longer_side(image: Image.Image, longer_side: int) -> Image.Image:
    size = scaled_size(*image.size, longer_side)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def peek_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) upright, from the first bytes of an image file; None where the header says nothing usable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(head))
            width, height = image.size
        except Exception:  # a partial or damaged header: the pair finds out properly when it decodes
            return None
        try:
            orientation = image.getexif().get(0x0112)
        except Exception:  # EXIF beyond the bytes read (a PNG may keep it after the pixels): take it as upright
            orientation = None
    return (height, width) if orientation in _ROTATED else (width, height)


def to_pixels(image: Image.Image) -> Tensor:
    """RGB image → (1, 3, H, W) uint8: a quarter of the memory of float32 while it waits for a device."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_tensor(image: Image.Image) -> Tensor:
    """RGB image → (1, 3, H, W) float32 in [0, 1]."""
    return to_pixels(image).float().div_(255.0)


def quantise(tensor: Tensor) -> Tensor:
    """[0, 1] floats → uint8 as a PNG stores them (rounded, not truncated); uint8 passes through."""
    if tensor.dtype == torch.uint8:
        return tensor
    return tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def to_image(tensor: Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W), in [0, 1] or uint8 → 8-bit RGB image."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    return Image.fromarray(quantise(tensor).permute(1, 2, 0).cpu().numpy(), "RGB")


def load(data: bytes, longer_side: int, name: str = "image") -> Tensor:
    return to_tensor(resize_longer_side(decode(data, name), longer_side))


def load_pixels(data: bytes, longer_side: int, name: str = "image") -> Tensor:
    return to_pixels(resize_longer_side(decode(data, name), longer_side))


def encode_png(image: Image.Image | Tensor) -> bytes:
    if isinstance(image, Tensor):
        image = to_image(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
