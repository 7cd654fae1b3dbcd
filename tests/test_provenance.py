"""The commit a run records: ``-dirty`` only when the package's tracked code differs from it, not when a
result, report or leaderboard page the run (or a reproduction around it) rewrites does."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from nlsearch.provenance import git_commit


@pytest.fixture()
def checkout(tmp_path):
    if shutil.which("git") is None:
        pytest.fail("git is needed to record a run's commit")
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    for path, text in {"nlsearch/ops.py": "x = 1\n", "pyproject.toml": "[project]\n",
                       "results/reproduce/report.md": "# report\n", "leaderboard/README.md": "# board\n"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                         text=True).stdout.strip()
    git_commit.cache_clear()
    yield tmp_path, sha
    git_commit.cache_clear()


def test_rewritten_results_leave_the_commit_clean(checkout):
    root, sha = checkout
    (root / "results/reproduce/report.md").write_text("# report, rewritten after a run\n")
    (root / "leaderboard/README.md").write_text("# re-rendered\n")
    (root / "results/new_run.json").write_text("{}")                     # untracked: never counts
    assert git_commit(root / "nlsearch") == sha                             # git runs inside the package


@pytest.mark.parametrize("path", ["nlsearch/ops.py", "pyproject.toml"])
def test_changed_code_makes_it_dirty(checkout, path):
    root, sha = checkout
    (root / path).write_text((root / path).read_text() + "# changed\n")
    assert git_commit(root / "nlsearch") == f"{sha}-dirty"

