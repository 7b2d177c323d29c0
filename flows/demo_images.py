"""Demo inputs from scikit-image's wheel: public-domain photos and textures that need no download,
so `make demo` works on any machine with pip."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from stylecore.images import encode_png

CONTENTS = ("chelsea", "astronaut")
STYLES = ("hubble_deep_field", "immunohistochemistry")


def sample_png(name: str) -> bytes:
    import skimage.data

    array = getattr(skimage.data, name)()
    return encode_png(Image.fromarray(array).convert("RGB"))


def export(folder: Path) -> list[Path]:
    """Write the samples as content/<name>.png and style/<name>.png under `folder` (idempotent)."""
    written = []
    for kind, names in (("content", CONTENTS), ("style", STYLES)):
        for name in names:
            path = folder / kind / f"{name}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(sample_png(name))
            written.append(path)
    return written
