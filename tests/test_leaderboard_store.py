"""Leaderboard storage and tables without training: entries one file each, the Parquet index (rebuilt
when stale), duplicates refused, concurrent writers in separate processes, ranks and sorting."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nlsearch.leaderboard.entry import Entry
from nlsearch.leaderboard.store import DuplicateEntryError, LeaderboardError, Store, read_entry
from nlsearch.leaderboard.table import display, ranked
from leaderboard_fixtures import make_entry, task_result


def _board(values):
    """Entries with recall accuracy (higher better) and lm bpb (lower better) per seed."""
    return [make_entry(name, {"r@1": task_result("r@1", acc), "l@1": task_result("l@1", bpb, False, "lm",
                                                                                  "bits_per_byte")})
            for name, (acc, bpb) in values.items()]


def test_an_entry_is_one_file_and_the_index_has_a_row_per_task(tmp_path):
    store = Store(tmp_path / "lb")
    entry = _board({"a": ([0.5, 0.7, 0.6], [2.0, 2.2, 2.1])})[0]
    path = store.add(entry)
    assert path == tmp_path / "lb" / "entries" / "test@1" / "tiny@1" / f"{entry.config_sha256[:12]}-a.json"
    assert read_entry(path) == entry
    index = pd.read_parquet(tmp_path / "lb" / "index.parquet")
    assert list(index.task) == ["r@1", "l@1"]
    row = index.set_index("task").loc["r@1"]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1) and row["n"] == 3
    assert row.tokens_per_s == pytest.approx(1001.0)


def test_a_duplicate_is_refused_with_a_pointer_and_nothing_changes(tmp_path):
    store = Store(tmp_path / "lb")
    first = store.add(_board({"a": ([0.5] * 3, [2.0] * 3)})[0])
    before = sorted(p.name for p in (tmp_path / "lb").rglob("*")), (tmp_path / "lb" / "index.parquet").read_bytes()
    again = _board({"a": ([0.9] * 3, [1.0] * 3)})[0]
    with pytest.raises(DuplicateEntryError) as err:
        store.add(again)
    assert err.value.existing == first and str(first) in str(err.value)
    renamed = again.model_copy(update={"name": "b", "config_sha256": "f" * 64, "id": "test@1/tiny@1/ffff-b",
                                       "protocol_sha256": "q" * 64})
    with pytest.raises(LeaderboardError, match="new version"):
        store.add(renamed)                          # same protocol version, another protocol content
    after = sorted(p.name for p in (tmp_path / "lb").rglob("*")), (tmp_path / "lb" / "index.parquet").read_bytes()
    assert after == before


def test_the_index_is_rebuilt_when_entry_files_change_behind_its_back(tmp_path):
    store = Store(tmp_path / "lb")
    a, b = _board({"a": ([0.5] * 3, [2.0] * 3), "b": ([0.4] * 3, [2.5] * 3)})
    store.add(a)
    Path(store.path_of(b)).write_text(b.model_dump_json())     # as a git merge would bring it
    assert set(store.index().name) == {"a", "b"}
    store.path_of(a).unlink()
    assert set(store.index().name) == {"b"}


def test_ranks_per_task_and_overall_respect_direction_ties_and_missing(tmp_path):
    store = Store(tmp_path / "lb")
    for entry in _board({"best": ([0.9] * 3, [1.0, 1.1, 1.2]), "tie": ([0.9] * 3, [3.0] * 3),
                         "worst": ([0.1] * 3, [2.0] * 3), "broken": ([None] * 3, [None] * 3)}):
        store.add(entry)
    table = ranked(store.index(), "test@1", "tiny@1").set_index("name")
    assert table.loc["best", "r@1.rank"] == table.loc["tie", "r@1.rank"] == 1
    assert table.loc["worst", "r@1.rank"] == 3 and table.loc["broken", "r@1.rank"] == 4
    assert list(table.sort_values("l@1.rank").index) == ["best", "worst", "tie", "broken"]   # lower bpb first
    assert table.loc["best", "rank"] == 1 and table.loc["broken", "rank"] == 4
    assert table.loc["tie", "score"] == pytest.approx((1 + 3) / 2) and math.isnan(table.loc["broken", "l@1.mean"])


def test_display_shows_mean_and_spread_filters_a_task_and_sorts(tmp_path):
    store = Store(tmp_path / "lb")
    for entry in _board({"aa": ([0.5, 0.7, 0.6], [2.0] * 3), "b": ([0.9] * 3, [3.0] * 3)}):
        store.add(entry)
    index = store.index()
    shown = display(index, "test@1", "tiny@1")
    assert list(shown.columns) == ["rank", "name", "kind", "depth", "params", "state", "r@1 accuracy ↑",
                                   "l@1 bits_per_byte ↓", "tokens/s"]
    assert shown.set_index("name").loc["aa", "r@1 accuracy ↑"] == "0.6000 ± 0.1000"
    only = display(index, "test@1", "tiny@1", task="l")
    assert list(only.name) == ["aa", "b"] and "r@1 accuracy ↑" not in only.columns
    assert list(display(index, "test@1", "tiny@1", sort="params").name) == ["b", "aa"]
    with pytest.raises(ValueError, match="cannot sort"):
        display(index, "test@1", "tiny@1", sort="colour")
    with pytest.raises(ValueError, match="no task"):
        display(index, "test@1", "tiny@1", task="nope")


def test_a_task_is_named_by_its_ref_its_name_or_a_part_of_one_name(tmp_path):
    store = Store(tmp_path / "lb")
    tasks = {"recall@1": [0.5] * 3, "recall_over@1": [0.4] * 3, "lm@1": [2.0] * 3}
    store.add(make_entry("a", {t: task_result(t, v) for t, v in tasks.items()}))
    index = store.index()
    head = lambda task: [c for c in display(index, "test@1", "tiny@1", task=task).columns if "@" in c]  # noqa: E731
    assert head("recall") == ["recall@1 accuracy ↑"]            # the exact name wins over a part of another
    assert head("recall@1") == ["recall@1 accuracy ↑"] and head("over") == ["recall_over@1 accuracy ↑"]
    with pytest.raises(ValueError, match=r"'rec' is ambiguous.*recall@1.*recall_over@1"):
        display(index, "test@1", "tiny@1", task="rec")
    with pytest.raises(ValueError, match=r"no task '1'"):          # a part of a name, not of the version
        display(index, "test@1", "tiny@1", task="1")


WRITER = """
import sys, time
from pathlib import Path
from nlsearch.leaderboard.entry import Entry
import nlsearch.leaderboard.store as store_module
from nlsearch.leaderboard.store import DuplicateEntryError, Store
write_text = store_module.write_text
def slow_write(text, path):            # widen the window between the duplicate check and the write
    time.sleep(0.02)
    return write_text(text, path)
store_module.write_text = slow_write
root, go, files = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
while not go.exists():
    time.sleep(0.005)
store = Store(root)
for f in files:
    try:
        store.add(Entry.model_validate_json(Path(f).read_text()))
        print("added", f)
    except DuplicateEntryError:
        print("duplicate", f)
"""


def test_concurrent_processes_never_corrupt_the_table(tmp_path):
    entries = _board({f"m{i}": ([i / 40] * 3, [2.0] * 3) for i in range(24)})
    shared = _board({"shared": ([0.5] * 3, [2.0] * 3)})[0]
    files = []
    for e in entries + [shared]:
        files.append(tmp_path / f"{e.name}.json")
        files[-1].write_text(e.model_dump_json())
    go, root = tmp_path / "go", tmp_path / "lb"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(go), str(files[-1]),
                               *map(str, files[:-1][i::4])], stdout=subprocess.PIPE, text=True, env=env)
             for i in range(4)]
    time.sleep(1.5)                                    # every writer imported and waiting
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    shared_lines = [line for out in outs for line in out.splitlines() if line.endswith("shared.json")]
    assert sorted(line.split()[0] for line in shared_lines) == ["added", "duplicate", "duplicate", "duplicate"]
    index = pd.read_parquet(root / "index.parquet")
    assert sorted(index.name.unique()) == sorted([e.name for e in entries] + ["shared"])
    assert len(index) == 2 * 25 and index.groupby("id").size().eq(2).all()
    assert len(list((root / "entries").rglob("*.json"))) == 25
    assert not [p for p in root.rglob(".*") if p.name != ".lock"]      # no temporary file left behind
    assert all(isinstance(read_entry(p), Entry) for p in (root / "entries").rglob("*.json"))


def test_an_index_derived_by_older_rules_is_rebuilt(tmp_path):
    """An index an older nlsearch wrote (its derived columns computed otherwise, e.g. tokens/s as a mean)
    lists the same files but is not read as is: rebuilt from the entries."""
    import nlsearch.leaderboard.store as store_module

    store = Store(tmp_path / "lb")
    a, _ = _board({"a": ([0.5] * 3, [2.0] * 3), "b": ([0.4] * 3, [2.5] * 3)})
    store.add(a)
    stale = pd.read_parquet(store.index_path).drop(columns="derived_by").assign(tokens_per_s=-1.0)
    stale.to_parquet(store.index_path)
    assert (store.index().tokens_per_s == a.tokens_per_s()).all()
    stale.assign(derived_by=store_module.DERIVED_BY - 1).to_parquet(store.index_path)
    assert (store.index().tokens_per_s == a.tokens_per_s()).all()


def test_each_task_marks_its_best_and_the_entries_within_seed_noise_of_it(tmp_path):
    """Welch's p against the best, checked where it has a closed form: the best's two seeds spread, the
    others' three seeds equal, so the test has exactly 1 degree of freedom and t follows a Cauchy law,
    p = 1 - (2/pi) atan(|t|). The best: 0.50 ± 0.0141 (se 0.01). 0.49 is t = 1 (p 0.5): within noise;
    0.30 is t = 20 (p 0.032): behind. One seed cannot be tested: unmarked. Lower-is-better tasks the same,
    mirrored."""
    store = Store(tmp_path / "lb")
    for entry in _board({"top": ([0.49, 0.51], [2.49, 2.51]), "near": ([0.49] * 3, [2.51] * 3),
                         "far": ([0.30] * 3, [2.70] * 3), "lone": ([0.495], [2.505])}):
        store.add(entry)
    table = ranked(store.index(), "test@1", "tiny@1").set_index("name")
    for task in ("r@1", "l@1"):
        p = table[f"{task}.p_best"]
        assert p["top"] == 1.0 and math.isnan(p["lone"])
        assert p["near"] == pytest.approx(1 - 2 / math.pi * math.atan(1.0), rel=1e-6)
        assert p["far"] == pytest.approx(1 - 2 / math.pi * math.atan(20.0), rel=1e-6)
    shown = display(store.index(), "test@1", "tiny@1").set_index("name")
    for head in ("r@1 accuracy ↑", "l@1 bits_per_byte ↓"):
        assert shown[head]["top"].endswith("(best)") and shown[head]["near"].endswith("(≈ best)")
        assert not shown[head]["far"].endswith(")") and not shown[head]["lone"].endswith(")")
