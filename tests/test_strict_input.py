"""Strict by default: a boolean where a number is expected, a key given twice and an abbreviated flag
are refused with the file and key named, before anything runs."""
import pytest
import yaml

from nlsearch.cli import main
from nlsearch.config import ConfigError
from nlsearch.search import load_space
from tests.search_fixtures import tiny_space, write_space


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
