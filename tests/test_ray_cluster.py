"""A search joins a real Ray cluster by address: a head node started for the test (``ray start --head
--block`` in its own session and temp folder), trials run there, and the test stops only the processes
it started (the head and its descendants, found through /proc), never by name. Slow; ``.ci/run`` runs it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from search_fixtures import tiny_space, write_space

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int):
    """Every process whose parent chain leads to ``pid`` (read from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier and p not in found}
        found |= frontier
    return found


@pytest.fixture()
def ray_head():
    """A head node with token authentication (Ray's default from 2.59): the token the test made is in
    the environment of the head and, later, of the search that joins it."""
    import secrets
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="nlsearch-ray-")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}",
                             "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **auth})
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, head.stdout.read()
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(0.5)
    yield f"127.0.0.1:{port}", temp, auth
    mine = _descendants(head.pid) | {head.pid}
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in mine:                                     # whatever the head started and left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_search_runs_its_trials_on_a_cluster_it_joins_by_address(ray_head, tmp_path):
    address, temp, auth = ray_head
    space = write_space(tmp_path, tiny_space(name="cluster", trials=2))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "RAY_TMPDIR": temp, **auth}
    proc = subprocess.run([sys.executable, "-m", "nlsearch.cli", "search", str(space), "--out", str(out),
                           "--address", address, "--quiet", "--no-plots", "--no-confirm"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"on cluster {address}, 2 workers, 1 CPU per trial" in text
    records = sorted(out.rglob("record.json"))
    assert len(records) == 2
