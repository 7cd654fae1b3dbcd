"""The protocol file: the shipped one is consistent with the task specs, budgets, baselines and claims;
a malformed one fails naming the file and key; tracks resolve by name, reference or file."""
from __future__ import annotations

import pytest
import yaml

from nlsearch.budgets import load_budget
from nlsearch.config import ConfigError
from nlsearch.leaderboard.claims import load_claims
from nlsearch.leaderboard.protocol import ProtocolError, load_protocol
from nlsearch.leaderboard.reproduce import BASELINES
from nlsearch.models import list_presets
from nlsearch.tasks import load_task
from leaderboard_fixtures import write_protocol


def test_the_shipped_protocol_names_real_tasks_metrics_budgets_and_claims():
    protocol = load_protocol()
    assert protocol.ref == "standard@4" and len(protocol.seeds) >= 3
    # recall@1 (8,192-token vocabulary) is ranked on the gpu track only: cpu@3 leaves it near chance
    assert "recall@1" in protocol.task_refs("gpu") and "recall@1" not in protocol.task_refs("cpu")
    assert set(protocol.task_refs("cpu")) == set(protocol.task_refs()) - {"recall@1"}
    for rule in protocol.tasks + protocol.claim_tasks:
        task = load_task(rule.task, protocol.resolve_tasks_dir())
        assert rule.metric in {m.name for m in task.spec.metrics}, rule
    assert [protocol.load_budget(b).ref for b in ("cpu", "gpu")] == ["cpu@3", "gpu@1"]
    # pinned to versions, and to the newest ones: a newer profile means a new protocol version
    assert protocol.load_budget() is load_budget("cpu@3") is load_budget("cpu")
    assert protocol.load_budget("gpu") is load_budget("gpu")
    assert set(BASELINES) <= set(list_presets())
    claims = load_claims(protocol.claims_path(), protocol).claims     # held to the protocol's roles and tasks
    roles = set(protocol.by_role())
    for claim in claims:
        check = claim.check
        used_roles = set(check.roles) | ({check.role} if check.role else set())
        used_models = set(check.winners) | set(check.losers) | set(check.models) | {check.model, check.reference}
        assert used_roles <= roles, claim.id
        assert used_models - {None} <= set(BASELINES), claim.id


@pytest.mark.parametrize("change, match", [
    ({"seeds": [0, 1]}, "seeds"),
    ({"seeds": [0, 0, 1]}, "seeds repeat"),
    ({"tasks": [{"task": "tiny_recall", "metric": "accuracy"}]}, "name@version"),
    ({"tasks": [{"task": "tiny_recall@1", "metric": "accuracy", "colour": 1}]}, r"tasks\.0\.colour"),
    ({"verify_seeds": 5}, "verify_seeds"),
    ({"lr_sweep": {"factors": []}}, r"lr_sweep\.factors"),
])
def test_a_malformed_protocol_names_the_file_and_key(tmp_path, change, match):
    path = write_protocol(tmp_path)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=match) as err:
        load_protocol(path)
    assert str(path) in str(err.value)


def test_bad_tracks_and_folders_are_protocol_errors(tmp_path):
    with pytest.raises(ProtocolError, match="budgets: 'nope@1'"):
        load_protocol(write_protocol(tmp_path / "a", budgets=["nope@1"]))
    with pytest.raises(ProtocolError, match="tasks_dir 'missing'"):
        load_protocol(write_protocol(tmp_path / "b", tasks_dir="missing"))
    protocol = load_protocol(write_protocol(tmp_path / "c"))
    assert protocol.load_budget("tiny").ref == protocol.load_budget("tiny@1").ref == "tiny@1"
    assert protocol.load_budget("smoke").ref == "smoke@1"
    with pytest.raises(ProtocolError, match="not one of its tracks"):
        protocol.load_budget("cpu")


def test_a_task_can_be_ranked_on_some_tracks_only(tmp_path):
    from nlsearch.leaderboard.scoring import planned_runs

    path = write_protocol(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["tracks"] = ["smoke"]
    path.write_text(yaml.safe_dump(data))
    protocol = load_protocol(path)
    first, rest = data["tasks"][0]["task"], [t["task"] for t in data["tasks"][1:]]
    assert list(protocol.task_refs("tiny")) == rest and list(protocol.task_refs("smoke")) == [first] + rest
    assert list(protocol.task_refs()) == [first] + rest          # every track's
    runs = planned_runs({"d_model": 32}, "m", None, protocol, protocol.load_budget("tiny"), tmp_path / "runs")
    assert len(runs) == len(rest) * len(protocol.seeds)           # the reproduction trains only the track's tasks
    data["tasks"][0]["tracks"] = ["gpu"]                          # not a budget name of this protocol's tracks
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProtocolError, match=r"tasks\[0\].*tracks \['gpu'\] are not budget names"):
        load_protocol(path)
    data["tasks"] = data["tasks"][:1]                             # then the tiny track would rank nothing
    data["tasks"][0]["tracks"] = ["smoke"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProtocolError, match="no task is ranked on track"):
        load_protocol(path)


def test_the_hash_changes_with_any_content(tmp_path):
    a = load_protocol(write_protocol(tmp_path / "a"))
    b = load_protocol(write_protocol(tmp_path / "b", tolerance={"abs": 0.02, "rel": 0.0}))
    same = load_protocol(write_protocol(tmp_path / "c"))
    assert a.ref == b.ref and a.sha256() != b.sha256() and a.sha256() == same.sha256()
    path = tmp_path / "tagged.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}) + "version: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_protocol(path)


def test_a_metric_the_task_does_not_declare_fails_before_any_run(tmp_path):
    from nlsearch.leaderboard.scoring import score_model

    path = write_protocol(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["metric"] = "perplexity"
    path.write_text(yaml.safe_dump(data))
    protocol = load_protocol(path)
    with pytest.raises(ValueError, match="metric 'perplexity' is not one the task reports"):
        score_model({"d_model": 32}, protocol, protocol.load_budget(), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
