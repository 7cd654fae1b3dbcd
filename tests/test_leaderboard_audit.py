"""``nlsearch leaderboard verify``: an entry's numbers are checked offline against its runs' records and
digests; a tampered metrics file, record or entry is named."""
import json
import shutil

import pytest

from nlsearch.cli import main
from nlsearch.leaderboard.audit import audit
from nlsearch.leaderboard.protocol import load_protocol
from nlsearch.leaderboard.submit import submit
from leaderboard_fixtures import write_protocol
from train_fixtures import TINY_MODEL


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    protocol = load_protocol(write_protocol(root / "protocol", tasks=["tiny_recall"]))
    entry, path = submit(TINY_MODEL, "tiny", protocol=protocol, root=root / "lb", runs_dir=root / "runs")
    return root, entry, path


def _copy(board, tmp_path):
    """A private copy of the board (entries and runs), its entry's run folders pointing into it."""
    root, entry, path = board
    shutil.copytree(root / "lb", tmp_path / "lb")
    shutil.copytree(root / "runs", tmp_path / "runs")
    new = next((tmp_path / "lb").rglob("*.json"))
    new.write_text(new.read_text().replace(str(root / "runs"), str(tmp_path / "runs")))
    return new


def test_an_honest_entry_verifies(board, tmp_path, capsys):
    _copy(board, tmp_path)
    assert audit(tmp_path / "lb") == (1, [])
    assert main(["leaderboard", "verify", "--dir", str(tmp_path / "lb")]) == 0
    assert "verified 1 entries: no problem" in capsys.readouterr().out


def test_a_changed_metrics_file_is_named(board, tmp_path):
    _copy(board, tmp_path)
    victim = next((tmp_path / "runs").rglob("metrics.parquet"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    checked, problems = audit(tmp_path / "lb")
    assert len(problems) == 1 and "does not match the sha256" in problems[0] and "tiny_recall@1" in problems[0]


def test_an_entry_number_that_its_record_does_not_hold_is_named(board, tmp_path):
    entry_file = _copy(board, tmp_path)
    data = json.loads(entry_file.read_text())
    seed = data["tasks"]["tiny_recall@1"]["seeds"][1]
    seed["metrics"]["accuracy"] = 0.999
    entry_file.write_text(json.dumps(data))
    _, problems = audit(tmp_path / "lb")
    assert problems == [f"{data['id']}: tiny_recall@1 seed {seed['seed']}: the entry and its run's record differ "
                        f"in metric accuracy"]
    assert main(["leaderboard", "verify", "--dir", str(tmp_path / "lb")]) == 1


def test_an_unknown_entry_id_is_an_error(board, tmp_path):
    _copy(board, tmp_path)
    with pytest.raises(ValueError, match="no leaderboard entry 'nope'"):
        audit(tmp_path / "lb", ["nope"])


def test_retraining_reproduces_an_honest_entry_and_catches_a_forged_one(board, tmp_path, capsys):
    """A forgery made consistently in the entry, its record and digests passes the offline check;
    only training again shows the number was never measured."""
    from nlsearch.leaderboard.audit import retrain
    from nlsearch.leaderboard.store import read_entry
    root, _, _ = board
    entry_file = _copy(board, tmp_path)
    protocol = load_protocol(root / "protocol" / "protocol.yaml")
    assert retrain(read_entry(entry_file), protocol, 1) == []
    data = json.loads(entry_file.read_text())
    seed0 = data["tasks"]["tiny_recall@1"]["seeds"][0]
    honest = seed0["metrics"]["accuracy"]
    seed0["metrics"]["accuracy"] = 0.999
    entry_file.write_text(json.dumps(data))
    problems = retrain(read_entry(entry_file), protocol, 1)
    assert problems == [f"{data['id']}: tiny_recall@1 seed 0: accuracy is 0.999 in the entry, {honest:.6g} "
                        f"retrained (tolerance 0.01 + 0.0 x |measured|)"]
    rc = main(["leaderboard", "verify", "--dir", str(tmp_path / "lb"), "--protocol",
               str(root / "protocol" / "protocol.yaml"), "--retrain", "1"])
    assert rc == 1 and "0.999 in the entry" in " ".join(capsys.readouterr().out.split())


def test_a_retrained_run_that_raises_is_that_entrys_problem(board, tmp_path, monkeypatch):
    """--retrain: a run that raises (no outcome to compare) is reported for its entry, not the end of the
    verification (the scratch runs are gone, so nothing says 'run again to train the rest')."""
    import nlsearch.train as train_module
    from nlsearch.leaderboard.audit import retrain
    from nlsearch.leaderboard.store import read_entry
    root, _, _ = board
    entry_file = _copy(board, tmp_path)
    protocol = load_protocol(root / "protocol" / "protocol.yaml")

    def train(*_a, **_k):
        raise MemoryError("no memory left")

    monkeypatch.setattr(train_module, "train", train)
    problems = retrain(read_entry(entry_file), protocol, 1)
    entry_id = read_entry(entry_file).id
    assert len(problems) == 1 and problems[0].startswith(f"{entry_id}: could not retrain: ")
    assert "no memory left" in problems[0] and "run the command again" not in problems[0]
