"""Inputs a hostile user would try: endless files, foreign storage, secrets in URIs, deep YAML, full disks,
temporaries that are not ours, and manifests that expand to the whole disk. Each is one line and exit 2."""

from __future__ import annotations

import errno
import http.server
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid

import pytest

from flows import cli, manifest, report, storage
from flows.manifest import BadManifest, load

from . import images as fixtures
from .conftest import ROOT

CLI_TIMEOUT = 180  # a regression (reading /dev/zero, waiting on a FIFO) fails here instead of hanging the suite
MAX_RSS_KIB = 4 << 20  # 4 GiB: importing torch takes ~1.4; reading /dev/zero reached 8 within 22 s


def run_cli(*args, env: dict | None = None) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=CLI_TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png", "s.png"):
        (tmp_path / "in" / name).write_bytes(fixtures.rgb_png())
    return tmp_path


def write(folder, text: str) -> str:
    path = folder / "job.yaml"
    path.write_text(text)
    return str(path)


def problems(path: str, **kwargs) -> list[str]:
    with pytest.raises(BadManifest) as caught:
        load(path, **kwargs)
    return caught.value.problems


# --- inputs that never end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["one", "validate"])
def test_a_device_is_refused_at_once_with_one_line(folder, command):
    """`stylize one /dev/zero …` reached 8 GB in 22 s; `stylize validate /dev/zero` 6 GB in 17 s."""
    args = ["one", "/dev/zero", str(folder / "in" / "s.png"), str(folder / "out.png")] if command == "one" else ["validate", "/dev/zero"]
    code, out, err, _ = run_cli(*args)
    assert code == 2
    assert one_line(err) == "stylize: error: /dev/zero: not a regular file (a device, FIFO or socket)"
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < MAX_RSS_KIB
    assert not (folder / "out.png").exists()


def test_a_fifo_is_refused_rather_than_waited_on(folder):
    fifo = folder / "in" / "pipe.png"
    os.mkfifo(fifo)
    code, out, err, _ = run_cli("one", str(folder / "in" / "a.png"), str(fifo), str(folder / "out.png"))
    assert code == 2
    assert one_line(err) == f"stylize: error: {fifo}: not a regular file (a device, FIFO or socket)"


def test_validate_refuses_devices_and_fifos_among_the_inputs(folder):
    os.mkfifo(folder / "in" / "pipe.png")
    found = problems(write(folder, "output: out\npairs:\n  - {content: /dev/urandom, style: in/s.png}\n  - {content: in/a.png, style: in/pipe.png}\n"))
    assert found == [
        f"{folder / 'job.yaml'}:3: pairs[0].content: /dev/urandom: not a regular file (a device, FIFO or socket)",
        f"{folder / 'job.yaml'}:4: pairs[1].style: {folder / 'in' / 'pipe.png'}: not a regular file (a device, FIFO or socket)",
    ]


def test_a_manifest_that_is_a_fifo_is_one_line(folder, capsys):
    os.mkfifo(folder / "job.yaml")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", cli.main(["validate", str(folder / "job.yaml")])), daemon=True)
    worker.start()
    worker.join(60)
    assert result.get("code") == 2, "validate waited on a FIFO"
    assert "not a regular file" in one_line(capsys.readouterr().err)


def test_reads_are_bounded_while_reading(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(storage.TooLarge, match=r"big.png: 1,000 bytes is over the limit of 999 bytes$"):
        storage.read_bytes(str(big), limit=999)
    assert storage.read_bytes(str(big), limit=1000) == b"x" * 1000
    # /proc files say they hold 0 bytes: the limit holds on the bytes read, not on the size reported
    with pytest.raises(storage.TooLarge, match=r"maps: more than 10 bytes is over the limit of 10 bytes$"):
        storage.read_bytes("/proc/self/maps", limit=10)
    with pytest.raises(storage.NotRegularFile):
        storage.read_head("/dev/zero")
    assert storage.MAX_IMAGE_BYTES == 256 << 20 and storage.MAX_REPORT_BYTES == 64 << 20 and storage.MAX_WEIGHTS_BYTES == 2 << 30


def test_validate_refuses_an_input_over_the_image_limit(folder, monkeypatch):
    monkeypatch.setattr(storage, "MAX_IMAGE_BYTES", 100)
    found = problems(write(folder, "output: out\npairs:\n  - {content: in/a.png, style: in/s.png}\n"))
    size = len(fixtures.rgb_png())
    assert found == [
        f"{folder / 'job.yaml'}:3: pairs[0].content: {folder / 'in' / 'a.png'}: {size:,} bytes is over the limit of 100 bytes",
        f"{folder / 'job.yaml'}:3: pairs[0].style: {folder / 'in' / 's.png'}: {size:,} bytes is over the limit of 100 bytes",
    ]


# --- only the storage the README promises ------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path))
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_PUT = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def http_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_content_and_output_are_refused_without_a_request(folder, http_host, capsys):
    content, style, out = (str(folder / "in" / n) for n in ("a.png", "s.png", "out.png"))
    assert cli.main(["one", f"http://{http_host}/a.png", style, out]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"stylize: error: http://{http_host}/a.png: unsupported storage 'http://'; accepted: a local path, file://, s3:// "
        "(more with STYLIZE_EXTRA_SCHEMES)"
    )
    assert cli.main(["one", content, style, f"http://{http_host}/out.png"]) == 2
    assert "unsupported storage 'http://'" in one_line(capsys.readouterr().err)
    assert _Recorder.requests == []


def test_validate_refuses_every_scheme_but_local_file_and_s3(folder, monkeypatch):
    monkeypatch.delenv(storage.EXTRA_SCHEMES_VARIABLE, raising=False)
    text = (
        "output: http://example.com/out\npairs:\n"
        "  - {content: 'http://example.com/a.png', style: in/s.png}\n"
        "  - {content: 'zip://a.png::file:///tmp/x.zip', style: in/s.png}\n"
        "  - {content: in/a.png, style: 'sftp://host/s.png'}\n"
        "  - {content: 'gs://bucket/*.png', style: in/s.png}\n"
        f"  - {{content: 'file://{folder}/in/a.png', style: in/s.png}}\n"
    )
    found = problems(write(folder, text))
    assert [p.split(": ", 2)[1] for p in found] == ["output", "pairs[0].content", "pairs[1].content", "pairs[2].style", "pairs[3].content"]
    for problem, scheme in zip(found, ["http", "http", "zip", "sftp", "gs"]):
        assert f"unsupported storage '{scheme}://'; accepted: a local path, file://, s3://" in problem, problem


def test_an_operator_may_enable_another_scheme(folder, monkeypatch):
    monkeypatch.setenv(storage.EXTRA_SCHEMES_VARIABLE, "gs, az")
    assert storage.check_uri("gs://bucket/a.png") == "gs://bucket/a.png"
    assert storage.allowed_schemes() == ("file", "s3", "gs", "az")
    # enabled, but its package is absent here: still one line, not an ImportError traceback
    (found,) = problems(write(folder, "output: out\npairs:\n  - {content: 'gs://bucket/*.png', style: in/s.png}\n"))
    assert "pairs[0].content: gs://bucket/*.png: gs:// storage is not available here" in found


# --- credentials inside URIs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLE:s3cr3t-value@bucket/in/a.png", "s3://s3cr3t-value@bucket/a.png", "http://user:s3cr3t-value@host/a.png"])
def test_credentials_in_a_uri_are_refused_without_echoing_them(folder, uri, capsys):
    with pytest.raises(storage.CredentialsInURI) as caught:
        storage.read_bytes(uri)
    assert "s3cr3t" not in str(caught.value) and "AKIA" not in str(caught.value)
    assert str(caught.value).endswith("credentials in a URI are refused (they would be logged and stored); use the AWS variables or a profile")

    found = problems(write(folder, f"output: '{uri.rsplit('/', 1)[0]}/out'\ndefaults: {{weights: '{uri}.pth'}}\npairs:\n  - {{content: '{uri}', style: in/s.png}}\n"))
    assert len(found) == 3 and all("credentials in a URI are refused" in p and "s3cr3t" not in p for p in found), found
    assert cli.main(["one", str(folder / "in" / "a.png"), uri, str(folder / "o.png")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "credentials in a URI are refused" in err and "s3cr3t" not in err


# --- tracebacks where one line is promised -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_yaml_is_one_line(folder, depth, capsys):
    path = write(folder, "output: out\npairs: " + "[" * depth + "]" * depth + "\n")
    assert cli.main(["validate", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[0].startswith(f"{path}:") and err[0].endswith(f"YAML nested more than {manifest.MAX_YAML_DEPTH} levels deep"), err
    assert err[1:] == [f"{path}: 1 problem(s)"]


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"hello": "world"}', "not a run report ('run_name' missing or not text)"),
        ("[1, 2]", "not a run report (a JSON list, not an object)"),
        ("not json", "not a run report (not JSON: Expecting value at line 1)"),
        ("[" * 100_000 + "]" * 100_000, "not a run report (JSON nested too deeply)"),
        ('{"run_name": "r", "manifest": "m.yaml", "output": "out", "pairs": [{"id": "a"}]}', "not a run report (pairs[0] needs an id and a status"),
        ('{"run_name": "r", "manifest": "http://h/m.yaml", "output": "out", "pairs": []}', "unsupported storage 'http://'"),
    ],
)
def test_retry_failed_on_a_file_that_is_not_a_report_is_one_line(tmp_path, text, reason, capsys):
    path = tmp_path / "report.json"
    path.write_text(text)
    assert cli.main(["retry-failed", str(path)]) == 2
    assert reason in one_line(capsys.readouterr().err)


def test_load_report_reads_a_report_within_its_limit(tmp_path, monkeypatch):
    good = {"run_name": "r", "manifest": "/m.yaml", "output": "/out", "pairs": [{"id": "a", "status": "failed"}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(good))
    assert report.load_report(str(path)) == good
    monkeypatch.setattr(storage, "MAX_REPORT_BYTES", 10)
    with pytest.raises(storage.TooLarge, match="is over the limit of 10 bytes"):
        report.load_report(str(path))
    with pytest.raises(storage.NotRegularFile):
        report.load_report("/dev/zero")


class _FullDisk:
    """A file whose writes fail as a full disk's do."""

    def __init__(self, name, *args, **kwargs):
        self.name = name
        self._real = open(name, *args, **kwargs)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "open", _FullDisk, raising=False)
    target = tmp_path / "out" / "result.png"
    with pytest.raises(storage.StorageFull, match=rf"^{target}: no space left on the device \(or over the disk quota\)$"):
        storage.write_bytes(str(target), b"png")
    assert list((tmp_path / "out").iterdir()) == []  # the temporary went too


def test_stylize_one_on_a_full_disk_is_one_line(tmp_path, squeezenet_weights, monkeypatch, capsys):
    monkeypatch.setattr(storage, "open", _FullDisk, raising=False)
    content = fixtures.write_sample(tmp_path, "tubingen.jpg")
    target = tmp_path / "out" / "result.png"
    args = ["one", str(content), str(content), str(target), "--model", "squeezenet1_1", "--weights", str(squeezenet_weights),
            "--size", "32", "--iterations", "1", "-q"]
    assert cli.main(args) == 2
    assert one_line(capsys.readouterr().err) == f"stylize: error: {target}: no space left on the device (or over the disk quota)"


def test_an_os_level_full_disk_error_is_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/data/out.png")

    monkeypatch.setattr(cli, "cmd_weights_show", full)
    assert cli.main(["weights", "list"]) == 2
    assert one_line(capsys.readouterr().err) == "stylize: error: /data/out.png: no space left on the device (or over the disk quota)"


# --- clean-up touches only what it wrote -------------------------------------------------------------------------------


def test_remove_temporaries_removes_only_its_own(tmp_path):
    output = tmp_path / "out"
    pair = output / "pair"
    pair.mkdir(parents=True)
    ours = pair / f".stylized.png.{uuid.uuid4().hex}.tmp"
    ours.write_bytes(b"half")
    kept = {
        ".notes.tmp": b"a user's file",
        ".stylized.png.1234.tmp": b"not our pattern",
        f".x.{uuid.uuid4().hex.upper()}.tmp": b"not our pattern",
        "stylized.png": b"done",
    }
    for name, data in kept.items():
        (pair / name).write_bytes(data)
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    link = pair / f".link.{uuid.uuid4().hex}.tmp"
    link.symlink_to(outside)  # a symlink named like ours: neither it nor its target is ours
    folder_named_ours = pair / f".dir.{uuid.uuid4().hex}.tmp"
    folder_named_ours.mkdir()

    assert storage.remove_temporaries(str(pair), within=str(output)) == 1
    assert not ours.exists()
    assert sorted(p.name for p in pair.iterdir()) == sorted([*kept, link.name, folder_named_ours.name])
    assert outside.read_bytes() == b"keep me" and link.is_symlink() and folder_named_ours.is_dir()


def test_a_pairs_leftovers_are_removed_from_its_folder_and_its_snapshots_folder(tmp_path):
    from flows.manifest import load
    from flows.pairs import remove_leftovers

    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "s.png").write_bytes(b"")
    (tmp_path / "job.yaml").write_text("output: out\npairs:\n  - {id: p, content: c.png, style: s.png}\n")
    (pair,) = load(str(tmp_path / "job.yaml")).pairs
    snapshots = tmp_path / "out" / "p" / "snapshots"
    snapshots.mkdir(parents=True)
    left = [snapshots.parent / f".losses.csv.{uuid.uuid4().hex}.tmp", snapshots / f".iter-0010.png.{uuid.uuid4().hex}.tmp"]
    for path in left:
        path.write_bytes(b"half")
    (snapshots / "iter-0005.png").write_bytes(b"done")
    assert remove_leftovers(pair) == 2
    assert not any(path.exists() for path in left) and (snapshots / "iter-0005.png").exists()


def test_remove_temporaries_does_not_follow_a_symlink_out_of_the_output(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / f".data.{uuid.uuid4().hex}.tmp"
    victim.write_bytes(b"someone else's")
    output = tmp_path / "out"
    output.mkdir()
    (output / "pair").symlink_to(elsewhere, target_is_directory=True)
    assert storage.remove_temporaries(str(output / "pair")) == 0
    assert storage.remove_temporaries(str(elsewhere), within=str(output)) == 0
    assert victim.read_bytes() == b"someone else's"


def test_write_bytes_temporaries_match_the_pattern_remove_temporaries_removes(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(os.path.basename(src)), real_replace(src, dst)))
    storage.write_bytes(str(tmp_path / "a.png"), b"x")
    assert len(seen) == 1 and storage.TEMPORARY_PATTERN.match(seen[0])


# --- validate that says yes too early ---------------------------------------------------------------------------------


def test_validate_refuses_missing_or_endless_weights(folder):
    text = (
        "output: out\ndefaults: {weights: models/missing.pth}\npairs:\n"
        "  - {content: in/a.png, style: in/s.png}\n"
        "  - {content: in/b.png, style: in/s.png, weights: /dev/zero}\n"
    )
    found = problems(write(folder, text))
    assert found == [
        f"{folder / 'job.yaml'}:2: defaults.weights: missing weights file 'models/missing.pth' ({os.path.abspath('models/missing.pth')})",
        f"{folder / 'job.yaml'}:5: pairs[1].weights: /dev/zero: not a regular file (a device, FIFO or socket)",
    ]


def test_validate_refuses_an_output_that_is_a_file_or_not_writable(folder, monkeypatch):
    (folder / "taken").write_text("a file")
    (found,) = problems(write(folder, "output: taken\npairs:\n  - {content: in/a.png, style: in/s.png}\n"))
    assert found == f"{folder / 'job.yaml'}:1: output: {folder / 'taken'}: is a file, not a folder"
    (found,) = problems(write(folder, "output: taken/deeper/out\npairs:\n  - {content: in/a.png, style: in/s.png}\n"))
    assert found == f"{folder / 'job.yaml'}:1: output: {folder / 'taken/deeper/out'}: {folder / 'taken'} is a file, not a folder"
    (found,) = problems(write(folder, "output: out\npairs:\n  - {content: in/a.png, style: in/s.png}\n"), output=str(folder / "taken"))
    assert found == f"--output: {folder / 'taken'}: is a file, not a folder"

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(folder) else real_access(path, mode, **kw))
    (found,) = problems(write(folder, "output: out\npairs:\n  - {content: in/a.png, style: in/s.png}\n"))
    assert found == f"{folder / 'job.yaml'}:1: output: {folder / 'out'}: not writable ({folder} may not be written by this user)"


def test_a_glob_over_its_limit_is_one_line(folder, monkeypatch):
    assert manifest.MAX_GLOB_MATCHES == 10_000
    monkeypatch.setattr(manifest, "MAX_GLOB_MATCHES", 2)
    (found,) = problems(write(folder, "output: out\npairs:\n  - {content: 'in/*.png', style: in/s.png}\n"))
    assert found == f"{folder / 'job.yaml'}:3: pairs[0].content: glob '{folder / 'in' / '*.png'}' matches more than 2 files (the limit per glob)"


def test_a_glob_over_the_whole_disk_stops_at_the_limit_quickly(folder):
    started = time.monotonic()
    (found,) = problems(write(folder, "output: out\npairs:\n  - {content: '/**/*', style: in/s.png}\n"))
    assert found.endswith("pairs[0].content: glob '/**/*' matches more than 10,000 files (the limit per glob)"), found
    assert time.monotonic() - started < 60


def test_pairs_over_the_manifest_limit_is_one_line(folder, monkeypatch):
    assert 20_000 < manifest.MAX_PAIRS == 50_000  # a 20,000-pair manifest must pass
    monkeypatch.setattr(manifest, "MAX_PAIRS", 3)
    text = "output: out\npairs:\n  - {content: [in/a.png, in/b.png], style: [in/s.png, in/a.png]}\n  - {content: in/a.png, style: in/b.png}\n"
    (found,) = problems(write(folder, text))
    assert found == f"{folder / 'job.yaml'}:3: pairs[0]: 4 pairs so far is over the limit of 3 pairs per manifest; split the manifest"
    monkeypatch.setattr(manifest, "MAX_PAIRS", 4)
    assert len(load(write(folder, text.replace("  - {content: in/a.png, style: in/b.png}\n", ""))).pairs) == 4


def test_s3_reads_and_globs_keep_their_limits(s3_bucket, monkeypatch):
    for name in ("a.png", "b.png", "c.png"):
        storage.write_bytes(f"s3://{s3_bucket}/in/{name}", b"x" * 100)
    assert storage.read_bytes(f"s3://{s3_bucket}/in/a.png", limit=100) == b"x" * 100
    with pytest.raises(storage.TooLarge, match=rf"^s3://{s3_bucket}/in/a.png: more than 99 bytes is over the limit of 99 bytes$"):
        storage.read_bytes(f"s3://{s3_bucket}/in/a.png", limit=99)
    with pytest.raises(storage.TooLarge, match="over the limit of 50 bytes"):
        storage.check_file(f"s3://{s3_bucket}/in/a.png", 50)
    assert storage.glob(f"s3://{s3_bucket}/in/*.png") == [f"s3://{s3_bucket}/in/{n}" for n in ("a.png", "b.png", "c.png")]
    with pytest.raises(storage.TooManyMatches, match="matches more than 2 files"):
        storage.glob(f"s3://{s3_bucket}/in/*.png", limit=2)
    assert storage.read_head(f"s3://{s3_bucket}/in/a.png", 10) == b"x" * 10
