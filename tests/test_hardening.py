"""Every bad input gets one clear line, the right exit code and no traceback, and the good pairs still complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flows.manifest import BadManifest, load

from . import images as fixtures
from .test_pipeline import put, run_cli, small_png

# Inputs that must fail their own pair, with the words the reason must contain.
BAD_IMAGES = {
    "empty.png": (b"", "empty file (0 bytes)"),
    "notes.jpg": (b"these are not pixels", "not an image Pillow can read"),
    "cut.jpg": (fixtures.truncated_jpeg(), "damaged image"),
    "cut.png": (fixtures.truncated_png(), "damaged image"),
    "bomb.png": (fixtures.huge_header_png(), "decompression bomb"),
}
# Inputs that look odd but must work.
ODD_BUT_GOOD = {
    "cmyk.jpg": fixtures.cmyk_jpeg(),
    "deep.png": fixtures.sixteen_bit_png(),
    "palette.png": fixtures.palette_png(),
    "grey.png": fixtures.grayscale_png(),
    "alpha.png": fixtures.rgba_png(),
    "rotated.jpg": fixtures.exif_rotated_jpeg(),
    "animated.gif": fixtures.animated_gif(),
}


@pytest.mark.slow
def test_a_run_with_every_kind_of_bad_image(tmp_path, prefect_api, squeezenet_weights):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(small_png("tubingen.jpg"))
    (tmp_path / "in" / "style.png").write_bytes(small_png("starry_night.jpg"))
    for name, (data, _) in BAD_IMAGES.items():
        (tmp_path / "in" / name).write_bytes(data)
    for name, data in ODD_BUT_GOOD.items():
        (tmp_path / "in" / name).write_bytes(data)
    pairs = "  - {id: good, content: in/photo.png, style: in/style.png}\n"
    pairs += "".join(f"  - {{id: bad-{n.replace('.', '-')}, content: in/photo.png, style: in/{n}}}\n" for n in BAD_IMAGES)
    pairs += "".join(f"  - {{id: odd-{n.replace('.', '-')}, content: in/{n}, style: in/style.png}}\n" for n in ODD_BUT_GOOD)
    (tmp_path / "job.yaml").write_text(
        f"output: out\nretries: 0\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 32, iterations: 2}}\n"
        f"pairs:\n{pairs}"
    )
    code, out, err = run_cli("run", str(tmp_path / "job.yaml"))
    assert code == 1
    assert "Traceback" not in out + err
    (run_dir,) = (tmp_path / "out" / "_runs").iterdir()
    report = {p["id"]: p for p in json.loads((run_dir / "report.json").read_text())["pairs"]}
    assert report["good"]["status"] == "completed"
    for name, (_, reason) in BAD_IMAGES.items():
        pair = report[f"bad-{name.replace('.', '-')}"]
        assert pair["status"] == "failed" and reason in pair["error"] and name in pair["error"], pair
        assert "\n" not in pair["error"]
    for name in ODD_BUT_GOOD:
        assert report[f"odd-{name.replace('.', '-')}"]["status"] == "completed", name
    assert f"failed: {', '.join('bad-' + n.replace('.', '-') for n in BAD_IMAGES)}" in err


NUMERIC = {
    # field: {value: accepted?}
    "size": {-1: False, 0: False, math.nan: False, 10**9: False, 64: True},
    "style_size": {-1: False, 0: False, math.nan: False, 10**9: False},
    "iterations": {-1: False, 0: False, math.nan: False, 10**9: False, 1: True},
    "content_weight": {-1: False, 0: True, math.nan: False, math.inf: False, 1e300: True},
    "tv_weight": {-1: False, 0: True, math.nan: False, -math.inf: False},
    "style_weights": {-1: False, 0: True, math.nan: False, math.inf: False},
    "style_strength": {-1: False, 0: False, math.nan: False, math.inf: False, 101: False, 0.5: True, 100: True},
    "lr": {-1: False, 0: False, math.nan: False, 1e9: False, 0.5: True},
    "seed": {-1: False, 0: True, 2**80: False},
}


def _yaml(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


@pytest.mark.parametrize("field, value, accepted", [(f, v, ok) for f, values in NUMERIC.items() for v, ok in values.items()])
def test_every_numeric_option_refuses_nonsense_with_one_line(tmp_path, field, value, accepted):
    (tmp_path / "a.png").write_bytes(fixtures.rgb_png())
    (tmp_path / "job.yaml").write_text(f"output: out\ndefaults: {{{field}: {_yaml(value)}}}\npairs: [{{content: a.png, style: a.png}}]\n")
    if accepted:
        load(str(tmp_path / "job.yaml"))
        return
    with pytest.raises(BadManifest) as caught:
        load(str(tmp_path / "job.yaml"))
    (problem,) = caught.value.problems
    assert f"job.yaml:2: defaults.{field}" in problem and "\n" not in problem


@pytest.mark.parametrize(
    "settings, field", [("retries: -1", "retries"), ("retries: 1000", "retries"), ("retry_delay_seconds: [-1]", "retry_delay_seconds"), ("retry_delay_seconds: .nan", "retry_delay_seconds")]
)
def test_run_settings_refuse_nonsense(tmp_path, settings, field):
    (tmp_path / "a.png").write_bytes(fixtures.rgb_png())
    (tmp_path / "job.yaml").write_text(f"output: out\n{settings}\npairs: [{{content: a.png, style: a.png}}]\n")
    with pytest.raises(BadManifest) as caught:
        load(str(tmp_path / "job.yaml"))
    (problem,) = caught.value.problems
    assert f"job.yaml:2: {field}" in problem


@pytest.mark.parametrize("pair_id", ["/etc/passwd", "../../outside", "a/../../b", ".hidden", "_runs", "UPPER", "a" * 129])
def test_ids_cannot_leave_the_output_prefix(tmp_path, pair_id):
    (tmp_path / "a.png").write_bytes(fixtures.rgb_png())
    (tmp_path / "job.yaml").write_text(f"output: out\npairs: [{{id: '{pair_id}', content: a.png, style: a.png}}]\n")
    with pytest.raises(BadManifest, match=r"pairs\[0\]\.id"):
        load(str(tmp_path / "job.yaml"))


@pytest.mark.slow
def test_missing_s3_inputs_and_a_missing_bucket(tmp_path, s3_bucket):
    put(s3_bucket, "in/a.png", fixtures.rgb_png())
    (tmp_path / "job.yaml").write_text(
        "output: out\npairs:\n"
        f"  - {{content: s3://{s3_bucket}/in/a.png, style: s3://{s3_bucket}/in/gone.png}}\n"
        f"  - {{content: s3://{s3_bucket}/in/*.jpg, style: s3://{s3_bucket}/in/a.png}}\n"
        f"  - {{content: s3://no-such-bucket-stylize/in/a.png, style: s3://{s3_bucket}/in/a.png}}\n"
    )
    code, out, err = run_cli("validate", str(tmp_path / "job.yaml"))
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert any(f"pairs[0].style: missing input 's3://{s3_bucket}/in/gone.png'" in line for line in lines), err
    assert any("pairs[1].content: glob" in line and "matches nothing" in line for line in lines), err
    assert any("pairs[2].content: missing input 's3://no-such-bucket-stylize/in/a.png'" in line for line in lines), err


@pytest.mark.slow
def test_cuda_out_of_memory_is_retried(tmp_path, prefect_api, squeezenet_weights):
    (tmp_path / "a.png").write_bytes(small_png("tubingen.jpg"))
    (tmp_path / "s.png").write_bytes(small_png("the_scream.jpg"))
    (tmp_path / "job.yaml").write_text(
        f"output: out\nretry_delay_seconds: 0\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 32, iterations: 2}}\n"
        "pairs: [{content: a.png, style: s.png}]\n"
    )
    code, out, err = run_cli("run", str(tmp_path / "job.yaml"), faults=[{"op": "oom", "match": "", "times": 1}])
    assert code == 0, err[-2000:]
    assert "OutOfMemoryError: CUDA out of memory" in err and "attempt 1 of 3, will retry" in err
    assert "1 completed, 0 skipped, 0 failed" in out


@pytest.mark.slow
def test_a_500_pair_manifest_completes(tmp_path, prefect_api, squeezenet_weights):
    from PIL import Image

    import numpy as np

    rng = np.random.default_rng(1)
    for kind, count in (("c", 25), ("s", 20)):
        (tmp_path / kind).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / kind / f"{i:02d}.png")
    (tmp_path / "job.yaml").write_text(
        f"output: out\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 16, iterations: 2}}\n"
        "pairs: [{content: 'c/*.png', style: 's/*.png'}]\n"
    )
    code, out, err = run_cli("run", str(tmp_path / "job.yaml"))
    assert code == 0, err[-2000:]
    assert "500 completed, 0 skipped, 0 failed" in out
    assert sum(1 for d in (tmp_path / "out").iterdir() if (d / "meta.json").exists()) == 500


@pytest.fixture
def s3_with_auth(tmp_path):
    """A moto server process that checks credentials after its first two requests (which set it up)."""
    import os
    import subprocess
    import sys

    import boto3

    from .conftest import free_port, stop, wait_for_http

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "2"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=open(tmp_path / "moto.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", 60, server)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        client.create_bucket(Bucket="locked")
        client.put_object(Bucket="locked", Key="in/a.png", Body=fixtures.rgb_png())
        yield endpoint
    finally:
        stop(server)


@pytest.mark.slow
def test_access_denied_is_one_line(tmp_path, s3_with_auth):
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    env = {**os.environ, "AWS_ENDPOINT_URL_S3": s3_with_auth, "AWS_ACCESS_KEY_ID": "AKIANOBODY", "AWS_SECRET_ACCESS_KEY": "wrong"}
    (tmp_path / "style.png").write_bytes(fixtures.rgb_png())
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "one", "s3://locked/in/a.png", str(tmp_path / "style.png"), str(tmp_path / "o.png"), "-q"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["stylize: error: s3://locked/in/a.png: access denied"]

    (tmp_path / "job.yaml").write_text("output: out\npairs: [{content: s3://locked/in/a.png, style: style.png}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(tmp_path / "job.yaml")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pairs[0].content: s3://locked/in/a.png: access denied" in done.stderr
