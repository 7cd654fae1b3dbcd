"""Searches and submissions join a real Ray cluster by address, started the way users do: a head node
(``ray start --head``) and a second node (``ray start --address``), on loopback, token authentication
on, in their own sessions and temp folder. Trials spread over both nodes (each record names its Ray
node); a node killed mid-trial gives a FAIL with the reason and the study goes on; the tests stop only
the processes they started (each ``ray start --block`` and its descendants, found through /proc),
never by name. Slow; ``.ci/run`` runs them."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

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


def _stop(proc: subprocess.Popen) -> None:
    """Stops a ``ray start --block`` and everything it started (and only that)."""
    mine = _descendants(proc.pid) | {proc.pid}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    def __init__(self):
        self.port = _free_port()
        self.temp = tempfile.mkdtemp(prefix="nlsearch-ray-")
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        self.head = self._start([ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={self.temp}", *common])
        self._wait_for(lambda: self._answers(), self.head)
        self.worker = self._start([ray, "start", f"--address=127.0.0.1:{self.port}", *common])
        self._wait_for(lambda: self._nodes() == 2, self.worker)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, argv) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=self.env)

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def _nodes(self) -> int:
        out = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address={self.address}"],
                             capture_output=True, text=True, env=self.env, timeout=60)
        active = out.stdout.split("Active:")[1].split("Pending:")[0] if "Active:" in out.stdout else ""
        return active.count("node_")

    @staticmethod
    def _wait_for(ready, proc, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the Ray cluster did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            _stop(proc)


@pytest.fixture()
def cluster():
    c = Cluster()
    yield c
    c.stop()


def _search(cluster, space: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "RAY_TMPDIR": cluster.temp}
    return subprocess.Popen([sys.executable, "-m", "nlsearch.cli", "search", str(space), "--out", str(out),
                             "--address", cluster.address, "--quiet", "--no-plots", "--no-confirm"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_trials_spread_over_both_nodes_and_each_record_names_its_node(cluster, tmp_path):
    space = write_space(tmp_path, tiny_space(name="spread", trials=2, steps=200))
    proc = _search(cluster, space, tmp_path / "out")
    text = " ".join(proc.communicate(timeout=600)[0].split())
    assert proc.returncode == 0, text
    assert f"on cluster {cluster.address}, 2 workers, 1 CPU per trial" in text
    records = sorted((tmp_path / "out").rglob("record.json"))
    nodes = {json.loads(r.read_text())["sessions"][0]["ray_node"] for r in records}
    assert len(records) == 2 and len(nodes) == 2                  # one trial on each node, at the same time


def test_a_node_killed_mid_trial_gives_a_failed_trial_with_the_reason(cluster, tmp_path):
    space = write_space(tmp_path, tiny_space(name="lost", trials=2, steps=3000))      # a checkpoint every 4 steps
    out = tmp_path / "out"
    proc = _search(cluster, space, out)
    deadline = time.monotonic() + 240
    while len(list(out.glob("trials/*/recall_small/seed0/checkpoints/step-*"))) < 2:  # both trials mid-way
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _stop(cluster.worker)                                                  # the second node goes away
    text = " ".join(proc.communicate(timeout=900)[0].split())
    assert proc.returncode == 0, text
    study = optuna.load_study(study_name="lost", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"], states
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert "worker died" in failed.user_attrs["reason"]


def test_a_submission_trains_on_the_cluster_it_joins(cluster, tmp_path):
    from leaderboard_fixtures import write_protocol
    from train_fixtures import TINY_MODEL
    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall",))
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "RAY_TMPDIR": cluster.temp}
    proc = subprocess.run([sys.executable, "-m", "nlsearch.cli", "submit", str(tmp_path / "model.yaml"), "--name",
                           "tiny", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(tmp_path / "lb"),
                           "--runs", str(tmp_path / "runs"), "--address", cluster.address], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = {json.loads(r.read_text())["sessions"][0].get("ray_node") for r in (tmp_path / "runs").rglob("record.json")}
    assert len(nodes) >= 1 and None not in nodes                              # every run trained in a Ray worker
