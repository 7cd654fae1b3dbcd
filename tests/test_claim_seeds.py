"""A claim that reads more seeds than the protocol ranks with (``seeds:`` in the claims file): its
models train the extra seeds on the tasks it reads, at the lr factor their sweep chose, for the claim
alone (entries keep the protocol's seeds); its verdict waits for them and reads every one; a
reproduction called again trains only what is missing."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics

import pytest
import yaml

from nlsearch.cli import main
from nlsearch.config import ConfigError
from nlsearch.leaderboard.claims import claim_seeds, extra_seeds, load_claims
from nlsearch.leaderboard.protocol import load_protocol
from nlsearch.leaderboard.store import Store
from leaderboard_fixtures import SETTING, write_protocol
from train_fixtures import TINY_MEMORY, TINY_MODEL

BEATS = {"kind": "beats", "winners": ["deltanet"], "losers": ["linear-attention"], "roles": ["recall"]}
CLAIMS = [
    {"id": "more-seeds", "claim": "delta beats dot, at five seeds", "source": "a paper", "budgets": ["tiny"],
     "source_setting": SETTING, "seeds": 5, "check": BEATS},
    {"id": "same", "claim": "delta beats dot", "source": "a paper", "budgets": ["tiny"],
     "source_setting": SETTING, "check": BEATS},
    {"id": "needle", "claim": "needle at four seeds", "source": "a paper", "budgets": ["tiny"],
     "source_setting": SETTING, "seeds": 4,       # a claim task: its seeds follow the claim-task scoring
     "check": {"kind": "beats", "winners": ["deltanet"], "losers": ["transformer"], "roles": ["needle"]}},
    {"id": "elsewhere", "claim": "at scale only", "source": "a paper", "budgets": ["gpu"],
     "source_setting": SETTING, "seeds": 6, "check": BEATS},     # not testable here: no extra seeds trained
]
NAMES = ("transformer", "deltanet", "linear-attention")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    protocol = write_protocol(root / "p", tasks=("tiny_recall", "tiny_lm"), claims=CLAIMS, factors=(0.5, 1.0),
                              claim_tasks=[{"task": "tiny_needle@1", "metric": "accuracy", "role": "needle"}])
    dot = {"kind": "memory", "n_heads": 2, "rule": "linear-attention"}
    models = {"transformer": TINY_MODEL, "deltanet": TINY_MEMORY, "linear-attention": {**TINY_MEMORY, "mixer": dot}}
    for name, cfg in models.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(root / "lb"),
            "--runs", str(root / "runs"), "--out", str(root / "out"),
            "--presets", *(str(root / f"{n}.yaml") for n in NAMES)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    (root / "log.txt").write_text(out.getvalue())
    return root, load_protocol(protocol), args


def _records(runs, task):
    """(model kind, seed, config hash) -> the record, read straight from the runs folder."""
    out = {}
    for path in runs.glob(f"{task}/*/*/record.json"):
        record = json.loads(path.read_text())
        rule = record["config"]["mixer"].get("rule")
        kind = rule["objective"] if isinstance(rule, dict) else "attention"
        out[(kind, record["seed"], record["config_sha256"])] = record
    return out


def _seeds_of(records, kind):
    return sorted(seed for k, seed, _ in records if k == kind)


def test_claim_seeds_run_on_from_the_protocols(tmp_path):
    protocol = load_protocol(write_protocol(tmp_path / "p", seeds=[0, 5, 7]))
    claims = [dict(CLAIMS[0], seeds=5), dict(CLAIMS[1])]
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": json.loads(json.dumps(claims))}))
    more, same = load_claims(path, protocol).claims
    assert claim_seeds(more, protocol) == (0, 5, 7, 8, 9) and extra_seeds(more, protocol) == (8, 9)
    assert claim_seeds(same, protocol) == (0, 5, 7) and extra_seeds(same, protocol) == ()


def test_a_claim_reading_fewer_seeds_than_the_protocol_is_refused(tmp_path):
    protocol = load_protocol(write_protocol(tmp_path / "p"))
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": json.loads(json.dumps([dict(CLAIMS[0], seeds=2)]))}))
    with pytest.raises(ConfigError, match=r"claim 'more-seeds': seeds 2 is fewer than the protocol's 3"):
        load_claims(path, protocol)


def test_the_extra_seeds_train_for_the_claims_models_on_its_tasks_only(seeded):
    root, _, _ = seeded
    recall = _records(root / "runs", "tiny_recall@1")
    assert _seeds_of(recall, "l2") == [0, 0, 1, 2, 3, 4] and _seeds_of(recall, "dot") == [0, 0, 1, 2, 3, 4]
    assert _seeds_of(recall, "attention") == [0, 0, 1, 2]        # a model no such claim names
    assert max(_seeds_of(_records(root / "runs", "tiny_lm@1"), "l2")) == 2       # a task no such claim reads
    needle = _records(root / "runs", "tiny_needle@1")            # the claim task, at the needle claim's 4
    assert _seeds_of(needle, "l2") == [0, 0, 1, 2, 3] and _seeds_of(needle, "attention") == [0, 0, 1, 2, 3]
    assert _seeds_of(needle, "dot") == []
    # each extra seed trains at the factor the sweep chose: the config of the protocol's later seeds
    for records, kinds in ((recall, ("l2", "dot")), (needle, ("l2", "attention"))):
        for kind in kinds:
            chosen = {sha for k, seed, sha in records if k == kind and seed == 1}
            extra = {sha for k, seed, sha in records if k == kind and seed >= 3}
            assert len(chosen) == 1 and extra <= chosen and extra


def test_the_extra_seeds_queue_as_soon_as_their_tasks_lr_is_chosen(seeded):
    """Not after the baseline's every task: DeltaNet's recall seeds 3 and 4 (a claim reads them) run
    before its lm runs (no claim reads them)."""
    root, _, _ = seeded
    lines = (root / "log.txt").read_text().splitlines()
    done = [i for i, line in enumerate(lines) if line.startswith("tiny-deltanet on ") and "completed" in line]
    extra = [i for i in done if "tiny_recall@1 seed 3" in lines[i] or "tiny_recall@1 seed 4" in lines[i]]
    lm = [i for i in done if "tiny_lm@1" in lines[i]]
    assert len(extra) == 4 and len(lm) == 8            # DeltaNet's and linear attention's (same config name)
    assert max(extra) < min(lm), "\n".join(lines)


def test_a_claim_reading_a_task_the_track_does_not_train_gets_no_extra_seeds(tmp_path):
    from nlsearch.leaderboard.claims import judge
    from nlsearch.leaderboard.reproduce import claim_seed_tasks, seeded_claims
    from leaderboard_fixtures import make_entry, task_result

    path = write_protocol(tmp_path / "p", tasks=("tiny_recall", "tiny_lm"), claims=CLAIMS[:1],
                          factors=(0.5, 1.0))
    raw = yaml.safe_load(path.read_text())
    raw["tasks"][0]["tracks"] = ["smoke"]              # recall: ranked on the smoke track only
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    protocol = load_protocol(path)
    track = protocol.load_budget("tiny")
    claim = load_claims(protocol.claims_path(), protocol).claims[0]
    assert seeded_claims([claim], protocol, track) == []
    assert claim_seed_tasks("deltanet", [claim], protocol, track) == {}
    entries = [make_entry(n, {"tiny_lm@1": task_result("tiny_lm@1", [2.0] * 3, False, "lm", "bits_per_byte")},
                          kind="baseline") for n in ("deltanet", "linear-attention")]
    verdict = judge(claim, entries, protocol, "tiny", budget=track)
    assert verdict.outcome == "not testable" and "has no result on tiny_recall@1" in verdict.reason


def test_entries_keep_the_protocols_seeds(seeded):
    root, _, _ = seeded
    entries = {e.name: e for e in Store(root / "lb").entries()}
    assert set(entries) == set(NAMES)
    for entry in entries.values():
        assert all([s.seed for s in t.seeds] == [0, 1, 2] for t in entry.tasks.values())


def test_the_claim_reads_every_one_of_its_seeds(seeded):
    root, _, _ = seeded
    data = {c["id"]: c for c in json.loads((root / "out" / "report.json").read_text())["claims"]}
    recall = _records(root / "runs", "tiny_recall@1")
    for name, kind in (("deltanet", "l2"), ("linear-attention", "dot")):
        chosen = next(sha for k, seed, sha in recall if k == kind and seed == 1)
        values = [r["metrics"]["accuracy"] for (k, _, sha), r in recall.items() if k == kind and sha == chosen]
        assert len(values) == 5
        mean, std, n = data["more-seeds"]["numbers"][f"{name} tiny_recall@1 accuracy"]
        assert (mean, std, n) == (pytest.approx(statistics.fmean(values)), pytest.approx(statistics.stdev(values)), 5)
        assert data["same"]["numbers"][f"{name} tiny_recall@1 accuracy"][2] == 3
    assert data["more-seeds"]["outcome"] in ("reproduced", "not reproduced", "unresolved")
    assert "over 5 seeds, the claim's own: 2 beyond the protocol's" in data["more-seeds"]["reason"]
    assert data["more-seeds"]["seeds"] == [0, 1, 2, 3, 4] and data["same"]["seeds"] == [0, 1, 2]
    assert data["more-seeds"]["runs_at_seeds"]["deltanet"]["tiny_recall@1"] == {"done": 6, "needed": 6}
    assert data["needle"]["numbers"]["deltanet tiny_needle@1 accuracy"][2] == 4
    assert data["elsewhere"]["outcome"] == "not testable" and data["elsewhere"]["seeds"] == [0, 1, 2]
    report = (root / "out" / "report.md").read_text()
    assert "Runs beyond the protocol's seeds, for the claims that read more (never ranked): " in report
    assert "deltanet on tiny_recall@1 2/2" in report and "transformer on tiny_needle@1 1/1" in report


def test_the_dry_run_counts_the_extra_seeds(seeded):
    from nlsearch.leaderboard.reproduce import reproduce_runs

    root, protocol, _ = seeded
    runs = reproduce_runs("tiny", protocol=protocol, root=root / "lb", runs_dir=root / "runs",
                          baselines=[str(root / f"{n}.yaml") for n in NAMES])
    # ranked: 3 models x 2 tasks x (2 sweep + 2 seeds); needle: 2 x 4; extra: 2 x 2 recall + 2 x 1 needle
    assert len(runs) == 24 + 8 + 6 and all(r.finished for r in runs)
    assert "0 of 38 runs finished already" in (root / "log.txt").read_text()          # so do the log ...
    assert "38 of 38 runs finished" in (root / "lb" / "README.md").read_text()        # ... and the page


def test_a_missing_extra_seed_makes_only_its_claim_wait_and_the_next_call_trains_only_it(seeded, tmp_path,
                                                                                          monkeypatch):
    import nlsearch.train as train_module
    from nlsearch.leaderboard.reproduce import _write_report

    root, protocol, args = seeded
    runs, lb = tmp_path / "runs", tmp_path / "lb"
    shutil.copytree(root / "runs", runs)
    shutil.copytree(root / "lb", lb)
    gone = [p.parent for p in runs.glob("tiny_recall@1/*/*seed[14]/record.json")
            if (json.loads(p.read_text())["config"]["mixer"].get("rule") or {}).get("objective") == "l2"]
    assert len(gone) == 2            # seed 4, and seed 1: an entry whose runs are not all in this folder
    for folder in gone:
        shutil.rmtree(folder)
    specs = [str(root / f"{n}.yaml") for n in NAMES]
    claims = load_claims(protocol.claims_path(), protocol).claims
    out = tmp_path / "out"
    _write_report(protocol, protocol.load_budget("tiny"), Store(lb), claims, None, specs, [], out, {}, runs)
    data = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert data["more-seeds"]["outcome"] == "pending"
    assert data["more-seeds"]["reason"] == ("runs missing at the claim's 5 seeds: "
                                            "deltanet has 4 of 6 runs on tiny_recall@1")
    final = {c["id"]: c for c in json.loads((root / "out" / "report.json").read_text())["claims"]}
    for cid in ("same", "needle"):                    # the other claims do not wait for it
        assert (data[cid]["outcome"], data[cid]["numbers"]) == (final[cid]["outcome"], final[cid]["numbers"])
    assert "deltanet on tiny_recall@1 1/2" in (out / "report.md").read_text()      # seed 4 (seed 1 is ranked)
    # a reproduction of a subset of the baselines: the claim waits for the model it does not measure
    _write_report(protocol, protocol.load_budget("tiny"), Store(lb), claims, None, specs[1:2], [], out, {},
                  root / "runs")
    data = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert data["more-seeds"]["outcome"] == "pending" and data["more-seeds"]["reason"] == (
        "runs missing at the claim's 5 seeds: linear-attention is not measured here")

    trained, train = [], train_module.train
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, task, budget, seed, *a, **k: trained.append((task.ref, seed))
                        or train(cfg, task, budget, seed, *a, **k))
    again = [a if a not in (str(root / "runs"), str(root / "lb"), str(root / "out")) else
             {str(root / "runs"): str(runs), str(root / "lb"): str(lb), str(root / "out"): str(out)}[a] for a in args]
    assert main(again) == 0
    assert sorted(trained) == [("tiny_recall@1", 1), ("tiny_recall@1", 4)]
    data = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert data["more-seeds"]["outcome"] == final["more-seeds"]["outcome"]
    assert data["more-seeds"]["numbers"]["deltanet tiny_recall@1 accuracy"][2] == 5


def test_a_run_at_an_extra_seed_that_raises_leaves_the_claim_pending_not_the_baseline(seeded, tmp_path, monkeypatch):
    import nlsearch.train as train_module

    root, _, args = seeded
    runs, lb, out = tmp_path / "runs", tmp_path / "lb", tmp_path / "out"
    shutil.copytree(root / "runs", runs)
    shutil.copytree(root / "lb", lb)
    for record in runs.glob("tiny_recall@1/*/*seed4/record.json"):
        if (json.loads(record.read_text())["config"]["mixer"].get("rule") or {}).get("objective") == "l2":
            shutil.rmtree(record.parent)

    def train(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "train", train)
    paths = {str(root / "runs"): str(runs), str(root / "lb"): str(lb), str(root / "out"): str(out)}
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main([paths.get(a, a) for a in args]) == 1
    said = " ".join(said.getvalue().split())
    assert "1 baseline(s) miss runs at a claim's extra seeds (its claims are pending)" in said
    assert "not scored" not in said and "a bug" in said
    assert sorted(p.name for p in (lb / "entries").rglob("*.json")) == \
        sorted(p.name for p in (root / "lb" / "entries").rglob("*.json"))
    data = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert data["more-seeds"]["outcome"] == "pending" and data["same"]["outcome"] != "pending"
