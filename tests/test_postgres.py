"""Past one machine the Prefect server runs on PostgreSQL: a real one, started here on 127.0.0.1."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, stop, wait_for_http
from .test_pipeline import lay_out_job

pytestmark = pytest.mark.slow


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (`make test` installs Debian's postgresql)")
    return Path(found[-1]).parent


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture
def postgres():
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="stylize-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o755)
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_postgres_user(), *cmd], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", f"-h 127.0.0.1 -p {port} -k {root}", "-l", str(root / "pg.log"), "-w", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect")
        yield {"url": f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", "port": port, "bin": bin_dir}
    finally:
        subprocess.run([*as_postgres_user(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_a_manifest_runs_through_a_prefect_server_on_postgres(postgres, tmp_path, squeezenet_weights):
    home = tmp_path / "prefect-home"
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres["url"],
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", 180, server)
        lay_out_job(tmp_path, squeezenet_weights)
        client_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        client_env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", str(tmp_path / "job.yaml")],
            capture_output=True, text=True, env=client_env, cwd=ROOT, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        stop(server)
    (run_dir,) = (tmp_path / "out" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    # The flow run and its task runs are rows in PostgreSQL, not in a SQLite file.
    query = (
        "select f.name, f.state_type, count(t.id) from flow_run f join task_run t on t.flow_run_id = f.id "
        "where t.name <> 'store-report' group by f.name, f.state_type"
    )
    rows = subprocess.run(
        [str(postgres["bin"] / "psql"), "-h", "127.0.0.1", "-p", str(postgres["port"]), "-U", "prefect", "-At", "-c", query, "prefect"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()
    # each of the 2 pairs has a read and a write task run, and its own batch (their options differ)
    assert f"{report['run_name']}|COMPLETED|6" in rows
    assert not list(home.glob("*.db")), "the server fell back to SQLite"
