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



def test_a_running_process_keeps_the_commit_of_the_code_it_imported(checkout):
    """A long run's worker imported the code of one commit: edits and commits made to the tree while
    it runs do not change what its records say it ran (the checkout's provenance module is this one)."""
    import os
    import sys
    from pathlib import Path

    import nlsearch.provenance
    import nlsearch.runtime

    root, sha = checkout
    for module in (nlsearch.provenance, nlsearch.runtime):
        shutil.copy(module.__file__, root / "nlsearch" / Path(module.__file__).name)
    (root / "nlsearch" / "__init__.py").write_text("")
    subprocess.run(["git", "add", "nlsearch"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code"], cwd=root,
                   check=True)
    loaded = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip()
    script = ("import sys, pathlib, subprocess\n"
              "import nlsearch.provenance as p\n"
              "assert pathlib.Path(p.__file__).parent == pathlib.Path(sys.argv[1]) / 'nlsearch'\n"
              "(pathlib.Path(sys.argv[1]) / 'nlsearch' / 'ops.py').write_text('x = 2\\n')\n"
              "p.git_commit.cache_clear()\n"
              "print(p.code_commit(), p.git_commit())\n")
    out = subprocess.run([sys.executable, "-c", script, str(root)], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [loaded, f"{loaded}-dirty"] and loaded != sha
