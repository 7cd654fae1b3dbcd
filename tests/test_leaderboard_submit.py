"""``submit`` end to end under a tiny protocol (4 tasks, 3 seeds, an lr sweep of two factors): the entry
holds every seed with provenance, the sweep's choice, aggregates equal to the run records'; duplicates
and bad input are refused with the leaderboard unchanged; a result file is verified by re-running a
seed in a fresh run directory, and tampered numbers are rejected."""
from __future__ import annotations

import json
import statistics

import pytest
import yaml

from nlsearch.cli import main
from nlsearch.config import ConfigError
from nlsearch.leaderboard.protocol import ProtocolError, load_protocol
from nlsearch.leaderboard.store import DuplicateEntryError, LeaderboardError, Store, read_entry
from nlsearch.leaderboard.submit import load_submission, submit
from nlsearch.leaderboard.verify import VerificationError, results_from_entry
from nlsearch.train import read_record
from leaderboard_fixtures import write_protocol
from train_fixtures import TINY_MEMORY, TINY_MODEL


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb")
    protocol = load_protocol(write_protocol(root / "protocol", factors=(0.5, 1.0)))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_MODEL))
    entry, path = submit(config, "tiny-attn", author="tester", protocol=protocol, root=root / "lb",
                         runs_dir=root / "runs")
    return root, protocol, config, entry, path


def test_the_entry_holds_every_seed_with_provenance(board):
    root, protocol, config, entry, path = board
    assert read_entry(path) == entry
    assert entry.protocol == "test@1" and entry.budget == "tiny@1" and entry.protocol_sha256 == protocol.sha256()
    assert entry.source_file == "tiny.yaml" and entry.kind == "submission" and entry.author == "tester"
    assert "vocab_size" not in entry.config and entry.config["d_model"] == TINY_MODEL["d_model"]
    assert load_submission(entry.config, protocol).sha256 == entry.config_sha256     # re-submittable as stored
    assert list(entry.tasks) == list(protocol.task_refs())
    assert entry.params > 0 and entry.nesting_depth >= 3 and entry.state_size > 0
    for ref, result in entry.tasks.items():
        assert [s.seed for s in result.seeds] == [0, 1, 2]
        for seed in result.seeds:
            assert seed.status == "completed" and seed.source == "measured" and seed.lr_factor == result.lr_factor
            record = read_record(seed.run.run_dir)
            assert record.task == ref and record.seed == seed.seed and record.budget == "tiny@1"
            assert seed.metrics[result.metric] == record.metrics[result.metric]
            assert seed.run.git_commit == record.git_commit and seed.run.hardware == record.hardware
        mean, std, n = result.aggregate()
        values = [s.metrics[result.metric] for s in result.seeds]
        assert n == 3 and mean == pytest.approx(statistics.fmean(values))
        assert std == pytest.approx(statistics.stdev(values))


def test_the_sweep_picks_the_best_factor_on_the_first_seed(board):
    _, _, _, entry, _ = board
    for result in entry.tasks.values():
        assert set(result.sweep) == {"0.5", "1"}
        signed = {f: (v if result.higher_is_better else -v) for f, v in result.sweep.items()}
        best = max(signed.values())
        assert signed[f"{result.lr_factor:g}"] == best
        assert result.seeds[0].metrics[result.metric] == pytest.approx(result.sweep[f"{result.lr_factor:g}"])


def test_a_duplicate_is_refused_before_training_and_points_at_the_entry(board, monkeypatch):
    root, protocol, config, _, path = board
    import nlsearch.leaderboard.submit as submit_module

    monkeypatch.setattr(submit_module, "score_model", lambda *a, **k: pytest.fail("trained a duplicate"))
    before = _snapshot(root / "lb")
    renamed = dict(TINY_MODEL, name="another-label")            # the label is not part of the hash
    with pytest.raises(DuplicateEntryError) as err:
        submit(renamed, "other-name", protocol=protocol, root=root / "lb", runs_dir=root / "runs")
    assert err.value.existing == path
    with pytest.raises(LeaderboardError, match="name 'tiny-attn' is taken"):
        submit(TINY_MEMORY, "tiny-attn", protocol=protocol, root=root / "lb", runs_dir=root / "runs")
    assert _snapshot(root / "lb") == before


@pytest.mark.parametrize("name, author, flag", [
    ("", "tester", "--name"), ("  ", "tester", "--name"), ("$\\nosuchmacro$", "tester", "--name"),
    ("ok", "[click](https://x)", "--author"), ("a\n# heading", "tester", "--name"), ("x" * 65, "t", "--name")])
def test_names_and_authors_are_plain_text_or_refused(board, tmp_path, monkeypatch, name, author, flag):
    root, protocol, _, _, _ = board
    import nlsearch.leaderboard.submit as submit_module

    monkeypatch.setattr(submit_module, "score_model", lambda *a, **k: pytest.fail("trained a refused entry"))
    before = _snapshot(root / "lb")
    with pytest.raises(LeaderboardError, match=f"{flag} .* must be 1-64 letters"):
        submit(TINY_MEMORY, name, author=author, protocol=protocol, root=root / "lb", runs_dir=tmp_path / "runs")
    assert _snapshot(root / "lb") == before


@pytest.mark.parametrize("text, match", [
    ("d_model: 32\nmixer: {kind: attention, n_heads: 2, colour: red}\n", r"mixer\.colour"),
    ("d_model: 30\nmixer: {kind: attention, n_heads: 4}\n", r"mixer"),
    ("d_model: [32\n", "not valid YAML"),
    ("- 1\n- 2\n", "mapping"),
    ("d_model: 512\nn_layers: 2\n", "max_params"),
    ("d_model: 32\nvocab_size: 16\nmixer: {kind: attention, n_heads: 2}\n", r"vocab_size=16, task tiny_\w+@1 needs"),
])
def test_bad_configs_fail_with_the_file_and_key_and_change_nothing(board, tmp_path, text, match):
    root, protocol, _, _, _ = board
    limited = load_protocol(write_protocol(tmp_path / "p", max_params=5_000_000))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    before = _snapshot(root / "lb")
    with pytest.raises(ConfigError, match=match) as err:
        submit(bad, "bad", protocol=limited, root=root / "lb", runs_dir=tmp_path / "runs")
    assert str(bad) in str(err.value)
    assert _snapshot(root / "lb") == before and not (tmp_path / "runs").exists()


def _claims(entry, tmp_path, change=None):
    data = results_from_entry(entry)
    if change:
        change(data)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_genuine_result_file_passes_after_a_fresh_rerun(board, tmp_path):
    root, protocol, config, entry, _ = board
    claims = _claims(entry, tmp_path)
    again, _ = submit(config, "tiny-claimed", protocol=protocol, root=tmp_path / "lb", runs_dir=tmp_path / "runs",
                      results=claims, verify_seeds=[1])
    assert again.verification.passed and again.verification.seeds == (1,)
    assert again.verification.max_deviation <= 0.01
    assert len(list((tmp_path / "runs").rglob("record.json"))) == len(protocol.tasks)     # one seed re-run
    for ref, result in again.tasks.items():
        assert [s.source for s in result.seeds] == ["claimed", "measured", "claimed"]
        assert result.seeds[0].metrics == entry.tasks[ref].seeds[0].metrics


def test_tampered_results_are_rejected_and_nothing_is_added(board, tmp_path, monkeypatch):
    root, protocol, config, entry, _ = board
    first = protocol.task_refs()[0]

    def inflate(data):
        metrics = data["tasks"][first]["seeds"][2]
        metrics["accuracy"] = metrics["accuracy"] + 0.2

    claims = _claims(entry, tmp_path, inflate)
    with pytest.raises(VerificationError, match=f"{first} seed 2 accuracy"):
        submit(config, "tiny-cheat", protocol=protocol, root=tmp_path / "lb", runs_dir=tmp_path / "runs",
               results=claims, verify_seeds=[2])
    assert not (tmp_path / "lb" / "entries").exists()
    (rejected,) = (tmp_path / "lb" / "rejected").rglob("*.json")
    assert json.loads(rejected.read_text())["config_sha256"] == entry.config_sha256
    # trying again (hoping the drawn seeds miss the invented one) is refused before anything is re-run,
    # even with a genuine file (without claims the config can still be submitted, every seed measured)
    import nlsearch.leaderboard.submit as submit_module
    monkeypatch.setattr(submit_module, "score_model", lambda *a, **k: pytest.fail("re-ran a rejected config's claims"))
    with pytest.raises(VerificationError, match="failed verification before"):
        submit(config, "tiny-cheat", protocol=protocol, root=tmp_path / "lb", runs_dir=tmp_path / "runs",
               results=_claims(entry, tmp_path), verify_seeds=[0])
    assert not (tmp_path / "lb" / "entries").exists()


@pytest.mark.parametrize("change, error, match", [
    (lambda d: d.update(config_sha256="0" * 64), LeaderboardError, "config_sha256 000000000000"),
    (lambda d: d.update(protocol="test@2"), ProtocolError, "protocol 'test@2'"),
    (lambda d: d.update(budget="smoke@1"), ProtocolError, "budget 'smoke@1'"),
    (lambda d: d["tasks"].pop("tiny_lm@1"), LeaderboardError, "no results for protocol task tiny_lm@1"),
    (lambda d: d["tasks"]["tiny_lm@1"].update(lr_factor=7.0), LeaderboardError, "lr_factor 7.0"),
])
def test_a_result_file_that_does_not_fit_is_refused_before_training(board, tmp_path, monkeypatch, change, error,
                                                                     match):
    root, protocol, config, entry, _ = board
    import nlsearch.leaderboard.submit as submit_module

    monkeypatch.setattr(submit_module, "score_model", lambda *a, **k: pytest.fail("trained"))
    claims = _claims(entry, tmp_path, change)
    with pytest.raises(error, match=match) as err:
        submit(config, "x", protocol=protocol, root=tmp_path / "lb", results=claims)
    assert str(claims) in str(err.value)
    assert not (tmp_path / "lb" / "entries").exists()


def test_cli_prints_filters_and_reports_bad_input_with_exit_code_2(board, capsys):
    root, protocol, config, entry, _ = board
    args = ["--protocol", str(protocol.source), "--dir", str(root / "lb")]
    assert main(["leaderboard", *args, "--task", "tiny_lm"]) == 0
    out = capsys.readouterr().out
    assert "tiny-attn" in out and "tiny_lm@1 bits_per_byte" in out and "tiny_recall@1" not in out
    assert main(["submit", str(config), "--name", "again", *args, "--runs", str(root / "runs")]) == 2
    assert "already on the leaderboard" in " ".join(capsys.readouterr().out.split())
    assert main(["leaderboard", *args, "--budget", "gpu"]) == 2
    assert "not one of its tracks" in " ".join(capsys.readouterr().out.split())
    assert main(["leaderboard", "index", *args]) == 0
    assert json.loads(read_entry(next((root / "lb" / "entries").rglob("*.json"))).model_dump_json())["name"]
    assert Store(root / "lb").index().id.nunique() == 1


def test_a_submission_whose_run_raises_is_refused_with_the_error(tmp_path, monkeypatch, capsys):
    """An lr-sweep run that raises (not a diverged loss) decides nothing: no lr is picked from it, no entry
    is written, the command exits 1 naming the run and the error."""
    import nlsearch.train as train_module

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall",), factors=(0.5, 1.0))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_MODEL))
    real = train_module.train

    def train(cfg, *a, **k):
        if cfg.optimizer.lr > TINY_MODEL["optimizer"]["lr"] * 0.75:        # the x1 sweep run
            raise MemoryError("no memory left")
        return real(cfg, *a, **k)

    monkeypatch.setattr(train_module, "train", train)
    code = main(["submit", str(config), "--name", "tiny", "--protocol", str(protocol), "--budget", "tiny",
                 "--dir", str(tmp_path / "lb"), "--runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 1 and "no memory left" in out and "lr x1" in out
    assert Store(tmp_path / "lb").entries() == []
