"""Hostile names and broken files: user data never reaches the terminal as markup or control codes,
and one unreadable leaderboard file is named and left out while the rest keeps working."""
from __future__ import annotations

import io

from rich.console import Console

from nlsearch.cli import main
from nlsearch.display import clean, rich_table, safe
from nlsearch.leaderboard.audit import audit
from nlsearch.leaderboard.store import Store
from leaderboard_fixtures import make_entry, task_result
from search_fixtures import tiny_space, write_space

HOSTILE = "x[/]y[bold]z\x1b]0;pwned\x07\x1b[31mred\u202eevil"


def _printed(*renderables) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def test_markup_and_control_characters_from_data_are_shown_not_obeyed():
    import pandas as pd
    assert "\x1b" not in clean(HOSTILE) and "\u202e" not in clean(HOSTILE) and "[/]" in clean(HOSTILE)
    table = rich_table(pd.DataFrame({HOSTILE: [HOSTILE, 1.5]}), HOSTILE)
    text = _printed(table, safe(HOSTILE))               # neither raises a MarkupError
    assert "]0;pwned" not in text.replace("\ufffd]0;pwned", "") and "x[/]y[bold]z" in text
    assert "\x1b[31mred" not in text


def test_space_show_prints_a_hostile_description_as_text(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path = write_space(tmp_path, tiny_space(name="h", description=HOSTILE))
    assert main(["space", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "x[/]y[bold]z" in out and "\x1b]0;pwned" not in out and "\x1b[31mred" not in out


def test_one_broken_entry_file_is_named_and_left_out_and_the_rest_works(tmp_path, capsys):
    store = Store(tmp_path / "lb")
    good = store.add(make_entry("good", {"r@1": task_result("r@1", [0.5, 0.6, 0.7])}))
    broken = good.parent / "truncated-bad.json"
    broken.write_bytes(good.read_bytes()[:100])
    binary = good.parent / "binary-bad.json"
    binary.write_bytes(b"\x00\xff\xfe" * 30)
    assert [e.name for e in store.entries()] == ["good"]
    assert sorted(p.split(":")[0] for p in store.broken) == sorted([str(binary), str(broken)])
    store.add(make_entry("second", {"r@1": task_result("r@1", [0.1, 0.2, 0.3])}))     # submissions still work
    assert set(store.index().name) == {"good", "second"}
    checked, problems = audit(tmp_path / "lb")             # verify names them as problems (the synthetic
    named = {p.split(":")[0] for p in problems}           # entries' missing runs are problems too)
    assert checked == 2 and {str(binary), str(broken)} <= named
    (tmp_path / "lb" / "index.parquet").write_bytes(b"not parquet")           # a corrupt derived index
    assert set(store.index().name) == {"good", "second"}
    assert main(["leaderboard", "index", "--dir", str(tmp_path / "lb")]) == 0
    out = "".join(capsys.readouterr().out.split())         # rich wraps long paths: compare without spaces
    assert f"skipped{broken}:notavalidleaderboardentry" in out and f"skipped{binary}" in out
