"""Strict by default: a boolean where a number is expected, a key given twice and an abbreviated flag
are refused with the file and key named, before anything runs."""
import pytest
import yaml

from nlsearch.cli import main
from nlsearch.config import ConfigError
from nlsearch.search import load_space
from search_fixtures import tiny_space, write_space


@pytest.mark.parametrize("value", ["yes", "true", "on"])
def test_a_yaml_boolean_for_a_count_is_refused_naming_file_and_key(tmp_path, value):
    path = write_space(tmp_path, tiny_space(name="b"))
    path.write_text(path.read_text().replace("trials: 3", f"trials: {value}"))
    with pytest.raises(ConfigError, match=r"(?s)b\.yaml.*trials: .*boolean where a number is expected"):
        load_space(path)


def test_a_key_given_twice_is_refused_naming_the_key_and_line(tmp_path):
    path = write_space(tmp_path, tiny_space(name="d"))
    path.write_text(path.read_text() + "trials: 7\n")
    with pytest.raises(ConfigError, match=r"(?s)d\.yaml.*key 'trials' is given twice"):
        load_space(path)


def test_an_abbreviated_flag_is_an_error_not_a_guess(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--worker", "2", str(write_space(tmp_path, tiny_space(name="a")))])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --worker" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_booleans_and_numbers_keep_working_where_they_belong(tmp_path):
    path = write_space(tmp_path, tiny_space(name="ok"))
    assert load_space(path).trials == 3
    assert yaml.safe_load("a: yes")["a"] is True            # plain PyYAML is untouched


def test_a_search_whose_constraints_no_candidate_meets_ends_with_an_error(tmp_path, capsys):
    space = tiny_space(name="impossible", trials=2, constraints={"params": {"max": 10}})
    path = write_space(tmp_path, space)
    rc = main(["search", str(path), "--workers", "1", "--out", str(tmp_path / "out"), "--quiet", "--no-plots"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "no candidate satisfied the space's constraints" in " ".join(out.split())
    assert not (tmp_path / "out" / "best.yaml").exists()


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"


@pytest.mark.parametrize("case, command, match", [
    ("alias", "search", r"an alias \(\*a\) is not accepted"),
    ("binary", "show", r"not a text file"),
    ("huge repeat", "search", r"params\.levels\.(group\.)?repeat.*at most 64 items"),
    ("no such question", "search", r"question 'colour' is neither a parameter"),
    ("one confirmation seed", "search", r"confirm\.seeds"),
    ("top-k of 0", "show", r"confirm\.top_k"),
])
def test_bad_space_files_end_with_one_line_naming_the_file_and_nothing_written(tmp_path, capsys, case, command,
                                                                                 match):
    data = tiny_space(name="bad")
    path = write_space(tmp_path, data)
    if case == "alias":
        path.write_text(BILLION_LAUGHS + path.read_text())
    elif case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 8)
    elif case == "huge repeat":
        data["params"]["levels"] = {"repeat": [0, 10 ** 12], "path": "mlp", "each": {"p": {"choices": [1, 2]}}}
        path = write_space(tmp_path, data)
    else:
        change = {"no such question": {"question": "colour"}, "one confirmation seed": {"confirm": {"seeds": [0]}},
                  "top-k of 0": {"confirm": {"top_k": 0}}}[case]
        path = write_space(tmp_path, {**data, **change})
    before = _tree(tmp_path)
    argv = ["search", str(path), "--out", str(tmp_path / "out"), "--quiet"] if command == "search" else \
        ["space", "show", str(path)]
    assert main(argv) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "Traceback" not in out and str(path.name) in out
    import re
    assert re.search(match, out), out
    assert _tree(tmp_path) == before                      # nothing written, no driver.lock left behind


def test_an_address_with_no_cluster_is_an_error_within_seconds_naming_it(tmp_path, capsys):
    import socket
    import time
    from nlsearch.cluster import host_port
    assert host_port("10.0.0.1") == ("10.0.0.1", 6379) and host_port("ray://h:123") == ("h", 123)
    assert host_port("ray://h") == ("h", 10001)
    with socket.socket() as s:                       # a port nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_space(tmp_path, tiny_space(name="c"))
    start = time.monotonic()
    rc = main(["search", str(path), "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and time.monotonic() - start < 30
    out = " ".join(capsys.readouterr().out.split())
    assert f"--address '127.0.0.1:{port}': no Ray cluster answers" in out
    assert not (tmp_path / "out").exists()


def test_a_journal_cut_mid_line_is_repaired_and_a_garbage_line_is_named(tmp_path, capsys, monkeypatch):
    import optuna
    from nlsearch.search.study import JOURNAL, make_storage
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="j", storage=make_storage(out, None))
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    journal = out / JOURNAL
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 4, "worker_id": "x", "tri')          # a crash mid-write
    assert len(optuna.load_study(study_name="j", storage=make_storage(out, None)).trials) == 2
    assert journal.read_bytes() == whole
    lines = whole.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2] + [b"garbage {not json\n"] + lines[2:]))
    damaged = journal.read_bytes()
    path = write_space(tmp_path, tiny_space(name="j"))
    monkeypatch.setenv("COLUMNS", "500")                      # one line: rich wraps long paths otherwise
    assert main(["search", str(path), "--out", str(out), "--quiet", "--workers", "1"]) == 2
    text = " ".join(capsys.readouterr().out.split())
    assert f"{journal}: line 3 is not a journal record" in text
    assert journal.read_bytes() == damaged                          # left as it was for the user to restore


@pytest.mark.parametrize("change, key", [
    ({"params": {"lr": {"float": [float("nan"), 1e-3], "path": "optimizer.lr"}}}, r"params\.lr\.(param\.)?float\.0"),
    ({"fixed": {"optimizer": {"kind": "adamw", "weight_decay": float("inf")}}}, r"optimizer\.weight_decay"),
])
def test_nan_and_infinite_numbers_are_refused_naming_the_key(tmp_path, change, key):
    path = write_space(tmp_path, {**tiny_space(name="n"), **change})
    with pytest.raises(ConfigError, match=rf"(?s)n\.yaml.*{key}.*finite number"):
        from nlsearch.search.driver import Driver
        Driver(load_space(path), tmp_path / "out", None)
    assert not (tmp_path / "out").exists()
