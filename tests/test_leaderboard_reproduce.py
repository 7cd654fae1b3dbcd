"""``reproduce``: claim verdicts from entries (synthetic numbers with known answers), and the whole
command at a tiny budget: baselines added as entries, the report lists every claim with its verdict and
the entries' numbers, a second call reuses the entries; ``--workers 2`` gives the serial numbers; the
verdicts of a whole reproduction whose evaluations return hand-set scores."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from nlsearch.cli import main
from nlsearch.leaderboard.claims import Claim, judge
from nlsearch.leaderboard.protocol import load_protocol
from nlsearch.leaderboard.scoring import score_model
from nlsearch.leaderboard.store import LeaderboardError, Store
from leaderboard_fixtures import SETTING, make_entry, task_result, write_protocol
from train_fixtures import TINY_MEMORY, TINY_MODEL


JUDGED = ("reproduced", "not reproduced", "unresolved")      # the outcomes of a claim the numbers decide


def _claim(check, budgets=("tiny",)):
    return Claim(id="c", claim="a claim", source="a paper, Table 1", budgets=budgets, source_setting=SETTING,
                 check=check)


@pytest.fixture()
def synthetic(tmp_path):
    protocol = load_protocol(write_protocol(tmp_path / "p", tasks=("tiny_recall", "tiny_lm", "tiny_needle")))
    rows = {"attn": (0.95, 1.5, (0.9, 0.8)), "delta": (0.8, 1.8, (0.9, 0.7)), "dot": (0.6, 1.7, (0.5, 0.1)),
            "nan": (None, None, (None, None))}
    entries = []
    for name, (acc, bpb, needle) in rows.items():
        entries.append(make_entry(name, {
            "tiny_recall@1": task_result("tiny_recall@1", [acc] * 3),
            "tiny_lm@1": task_result("tiny_lm@1", [bpb] * 3, False, "lm", "bits_per_byte"),
            "tiny_needle@1": task_result("tiny_needle@1", [None] * 3, kind="longctx",
                                         per_length={160: [needle[0]] * 3, 320: [needle[1]] * 3})},
            kind="baseline"))
    # a submission named like a baseline (its numbers may be claimed): never used for a claim
    entries.append(make_entry("mamba", {"tiny_recall@1": task_result("tiny_recall@1", [0.99] * 3)}))
    return protocol, entries


@pytest.mark.parametrize("check, outcome", [
    ({"kind": "at_least", "model": "attn", "role": "recall", "value": 0.9}, "reproduced"),
    ({"kind": "at_least", "model": "delta", "role": "recall", "value": 0.9}, "not reproduced"),
    ({"kind": "at_least", "model": "attn", "role": "lm", "value": 1.6}, "reproduced"),       # lower is better
    ({"kind": "at_least", "model": "dot", "role": "lm", "value": 1.6}, "not reproduced"),
    ({"kind": "beats", "winners": ["delta"], "losers": ["dot"], "roles": ["recall"]}, "reproduced"),
    ({"kind": "beats", "winners": ["delta"], "losers": ["dot"], "roles": ["recall", "lm"]}, "not reproduced"),
    ({"kind": "beats", "winners": ["delta"], "losers": ["attn"], "roles": ["needle"], "length": "longest"},
     "not reproduced"),
    ({"kind": "beats", "winners": ["attn", "delta"], "losers": ["dot"], "roles": ["needle"], "length": "longest"},
     "reproduced"),
    ({"kind": "order", "role": "lm", "models": ["attn", "dot", "delta"]}, "reproduced"),
    ({"kind": "order", "role": "lm", "models": ["attn", "delta", "dot"]}, "not reproduced"),
    ({"kind": "gap_grows", "reference": "attn", "models": ["dot"], "roles": ["recall", "needle"]}, "not testable"),
    ({"kind": "beats", "winners": ["delta"], "losers": ["dot"], "roles": ["overwrite"]}, "not testable"),
    ({"kind": "beats", "winners": ["mamba"], "losers": ["dot"], "roles": ["recall"]}, "not testable"),
    ({"kind": "at_least", "model": "nan", "role": "recall", "value": 0.1}, "not testable"),
])
def test_verdicts(synthetic, check, outcome):
    protocol, entries = synthetic
    verdict = judge(_claim(check), entries, protocol, "tiny")
    assert verdict.outcome == outcome, verdict.reason


def test_a_failed_beats_check_shows_every_models_numbers_and_names_the_pairs_that_fail(synthetic):
    """The first failing pair decides the verdict, but the reader gets every model's numbers and which
    pairs fail, not only the first one looked up."""
    protocol, entries = synthetic
    check = {"kind": "beats", "winners": ["dot", "attn"], "losers": ["delta"], "roles": ["recall"]}
    verdict = judge(_claim(check), entries, protocol, "tiny")
    assert verdict.outcome == "not reproduced"
    assert {k.split()[0] for k in verdict.numbers} == {"attn", "dot", "delta"}
    assert "against the claim beyond seed noise (1 of 2): dot vs delta (gap -0.2, p = 0)" in verdict.reason


def _t2_p(t):
    """Student's t with 2 degrees of freedom, two-sided: P(|T| >= t) = 1 - t / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_a_margin_counts_only_beyond_the_seeds_noise(synthetic):
    """Seeds 0.5/0.7/0.9 (mean 0.7, std 0.2) against 0.65 x 3: t = 0.05 / (0.2 / sqrt 3), df 2, p = 0.71:
    the order is not resolved, whichever way the claim reads it; 0.95/1.0/1.05 against 0.65 x 3 is
    (t = 12.1, p = 0.007), for the claim or against it; spread-free numbers that differ always are."""
    protocol, _ = synthetic
    rows = {"wide": [0.5, 0.7, 0.9], "tight": [0.65] * 3, "low": [0.1] * 3, "high": [0.95, 1.0, 1.05]}
    entries = [make_entry(n, {"tiny_recall@1": task_result("tiny_recall@1", v)}, kind="baseline")
               for n, v in rows.items()]

    def verdict(check):
        return judge(_claim(check), entries, protocol, "tiny")

    def beats(winners, losers):
        return verdict({"kind": "beats", "winners": winners, "losers": losers, "roles": ["recall"]})

    p_close = _t2_p(0.05 / (0.2 / math.sqrt(3)))
    p_apart = _t2_p(0.35 / (0.05 / math.sqrt(3)))
    assert p_close == pytest.approx(0.707, abs=1e-3) and p_apart < 0.01
    close = beats(["wide"], ["tight"])
    assert close.outcome == "unresolved"
    assert f"not resolved by the seeds: wide vs tight (gap +0.05, p = {p_close:.2g})" in close.reason
    leaning_against = beats(["tight"], ["wide"])
    assert leaning_against.outcome == "unresolved" and f"tight vs wide (gap -0.05, p = {p_close:.2g})" \
        in leaning_against.reason
    apart = beats(["high"], ["tight"])
    assert apart.outcome == "reproduced" and f"(t-test of the seed means, p = {p_apart:.2g} < α = 0.05)" in apart.reason
    against = beats(["tight"], ["high"])
    assert against.outcome == "not reproduced" and f"tight vs high (gap -0.35, p = {p_apart:.2g})" in against.reason
    assert beats(["tight"], ["low"]).outcome == "reproduced"                         # no spread: p = 0
    ordered = verdict({"kind": "order", "role": "recall", "models": ["wide", "tight", "low"]})
    assert ordered.outcome == "unresolved"
    assert "wide vs tight" in ordered.reason and "tight vs low" not in ordered.reason
    # a bound: one-sample t = (0.7 - 0.6) / (0.2 / sqrt 3) with 2 degrees of freedom
    bound = verdict({"kind": "at_least", "model": "wide", "role": "recall", "value": 0.6})
    p_bound = _t2_p(0.1 / (0.2 / math.sqrt(3)))
    assert bound.outcome == "unresolved" and f"wide ≥ 0.6 (gap +0.1, p = {p_bound:.2g})" in bound.reason
    one_seed = make_entry("one", {"tiny_recall@1": task_result("tiny_recall@1", [0.99])}, kind="baseline")
    entries.append(one_seed)
    lone = beats(["one"], ["low"])
    assert lone.outcome == "unresolved" and "no test: a side has fewer than two seeds" in lone.reason


def test_a_claim_is_refuted_only_beyond_noise_corrected_for_its_comparisons(synthetic):
    """0.5/0.6/0.7 against 0.93 x 3 (twice): each p = 0.029 alone, so one such comparison refutes a
    claim; two of them, Holm-adjusted (2 x 0.029 = 0.059), do not: the claim is unresolved."""
    protocol, _ = synthetic
    rows = {"mid": [0.5, 0.6, 0.7], "top1": [0.93] * 3, "top2": [0.93] * 3}
    entries = [make_entry(n, {"tiny_recall@1": task_result("tiny_recall@1", v)}, kind="baseline")
               for n, v in rows.items()]
    p = _t2_p(0.33 / (0.1 / math.sqrt(3)))
    assert p < 0.05 <= 2 * p
    one = judge(_claim({"kind": "beats", "winners": ["mid"], "losers": ["top1"], "roles": ["recall"]}), entries,
                protocol, "tiny")
    assert one.outcome == "not reproduced" and f"mid vs top1 (gap -0.33, p = {p:.2g})" in one.reason
    two = judge(_claim({"kind": "beats", "winners": ["mid"], "losers": ["top1", "top2"], "roles": ["recall"]}),
                entries, protocol, "tiny")
    assert two.outcome == "unresolved"
    assert f"mid vs top1 (gap -0.33, p = {p:.2g}, Holm-adjusted {2 * p:.2g})" in two.reason


def test_a_lower_is_better_metric_is_tested_the_right_way_round(synthetic):
    """Bits per byte 1.4/1.5/1.6 (lower is better) against bounds: at most 2.0 holds beyond noise
    (gap +0.5, p = 0.013), at most 1.0 fails beyond it, at most 1.6 is not resolved (gap +0.1)."""
    protocol, _ = synthetic
    entries = [make_entry("noisy", {"tiny_lm@1": task_result("tiny_lm@1", [1.4, 1.5, 1.6], False, "lm",
                                                              "bits_per_byte")}, kind="baseline")]

    def bound(value):
        return judge(_claim({"kind": "at_least", "model": "noisy", "role": "lm", "value": value}), entries,
                     protocol, "tiny")

    far = _t2_p(0.5 / (0.1 / math.sqrt(3)))
    assert bound(2.0).outcome == "reproduced" and f"p = {far:.2g}" in bound(2.0).reason
    assert bound(1.0).outcome == "not reproduced" and f"noisy ≤ 1.0 (gap -0.5, p = {far:.2g})" in bound(1.0).reason
    near = bound(1.6)
    assert near.outcome == "unresolved" and f"noisy ≤ 1.6 (gap +0.1, p = {_t2_p(math.sqrt(3)):.2g})" in near.reason


def test_a_claim_task_finished_beside_an_entry_is_read_while_the_reproduction_goes_on(tmp_path):
    """Two baselines already entries (ranked tasks) whose claim task has every run back but which are
    still pending (another claim task of theirs runs): the claim reading the finished task is judged
    from it, not called untestable for want of a result on the entry."""
    protocol = load_protocol(write_protocol(tmp_path / "p", tasks=("tiny_recall",),
                                            claim_tasks=[{"task": "tiny_needle@1", "metric": "accuracy",
                                                          "role": "needle"}]))
    entries = [make_entry(n, {"tiny_recall@1": task_result("tiny_recall@1", [0.5] * 3)}, kind="baseline")
               for n in ("a", "b")]
    needle = {n: {"tiny_needle@1": task_result("tiny_needle@1", [None] * 3, kind="longctx",
                                               per_length={160: [v] * 3, 320: [v] * 3})}
              for n, v in (("a", 0.9), ("b", 0.2))}
    check = {"kind": "beats", "winners": ["a"], "losers": ["b"], "roles": ["needle"], "length": "longest"}
    verdict = judge(_claim(check), entries, protocol, "tiny", pending=["a", "b"], measured=needle)
    assert verdict.outcome == "reproduced" and verdict.numbers
    assert judge(_claim(check), entries, protocol, "tiny", pending=["a", "b"]).outcome == "pending"


def test_the_gap_grows_check_compares_the_leads(synthetic):
    protocol, entries = synthetic
    easy_hard = {"kind": "gap_grows", "reference": "attn", "models": ["dot"], "roles": ["lm", "recall"]}
    verdict = judge(_claim(easy_hard), entries, protocol, "tiny")
    assert verdict.outcome == "reproduced"          # lead 1.7 - 1.5 = 0.2 in bpb, then 0.35 in accuracy
    swapped = dict(easy_hard, roles=["recall", "lm"])
    assert judge(_claim(swapped), entries, protocol, "tiny").outcome == "not reproduced"


def test_a_claim_outside_its_budgets_is_not_testable_but_shows_the_numbers(synthetic):
    protocol, entries = synthetic
    check = {"kind": "at_least", "model": "attn", "role": "recall", "value": 0.9}
    verdict = judge(_claim(check, budgets=("cpu", "gpu")), entries, protocol, "tiny")
    assert verdict.outcome == "not testable" and "the numbers would read: reproduced" in verdict.reason
    assert verdict.numbers == {"attn tiny_recall@1 accuracy": (pytest.approx(0.95), 0.0, 3)}


CLAIMS = [
    {"id": "delta-beats-dot", "claim": "delta beats dot", "source": "DeltaNet paper", "budgets": ["tiny"],
     "source_setting": SETTING,
     "check": {"kind": "beats", "winners": ["deltanet"], "losers": ["linear-attention"], "roles": ["recall"]}},
    {"id": "lm-order", "claim": "lm order", "source": "NL Table 1", "budgets": ["tiny"],
     "source_setting": SETTING,
     "check": {"kind": "order", "role": "lm", "models": ["deltanet", "transformer"]}},
    {"id": "big-only", "claim": "at scale", "source": "Zoology Figure 2", "budgets": ["cpu", "gpu"],
     "source_setting": SETTING,
     "check": {"kind": "at_least", "model": "transformer", "role": "recall", "value": 0.9}},
    {"id": "needle", "claim": "needle", "source": "Titans S-NIAH table", "budgets": ["tiny"],
     "source_setting": SETTING,            # reads a claim task: scored for these two baselines only
     "check": {"kind": "beats", "winners": ["deltanet"], "losers": ["transformer"], "roles": ["needle"]}},
]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    protocol = write_protocol(root / "p", tasks=("tiny_recall", "tiny_lm"), claims=CLAIMS,
                              claim_tasks=[{"task": "tiny_needle@1", "metric": "accuracy", "role": "needle"}])
    dot = {"kind": "memory", "n_heads": 2, "rule": "linear-attention"}
    models = {"transformer": TINY_MODEL, "deltanet": TINY_MEMORY, "linear-attention": {**TINY_MEMORY, "mixer": dot}}
    files = []
    for name, cfg in models.items():
        files.append(root / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(cfg))
    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(root / "lb"),
            "--runs", str(root / "runs"), "--out", str(root / "out"), "--presets", *map(str, files)]
    assert main(args) == 0
    return root, load_protocol(protocol), args


def _record_means(runs, task, metric):
    """Per model kind ('attention', 'l2', 'dot'), the mean of ``metric`` over the three seeds' records of
    ``task``, read straight from the runs folder and summed by hand (not through entries or aggregates)."""
    values = {}
    for record_file in sorted(runs.glob(f"{task}/*/*seed[012]/record.json")):
        record = json.loads(record_file.read_text())
        kind = _objective(record_file.parent) or "attention"
        values.setdefault(kind, []).append(record["metrics"][metric])
    assert all(len(v) == 3 for v in values.values()), values
    return {k: (v[0] + v[1] + v[2]) / 3 for k, v in values.items()}


def test_baselines_are_entries_and_the_report_judges_every_claim(reproduced):
    root, protocol, _ = reproduced
    entries = {e.name: e for e in Store(root / "lb").entries()}
    assert set(entries) == {"transformer", "deltanet", "linear-attention"}
    assert all(e.kind == "baseline" and e.budget == "tiny@1" for e in entries.values())
    report = (root / "out" / "report.md").read_text()
    data = {c["id"]: c for c in json.loads((root / "out" / "report.json").read_text())["claims"]}
    assert data["big-only"]["outcome"] == "not testable" and "tiny" in data["big-only"]["reason"]
    # judged (which way is test_the_report_judges_hand_set_numbers' business), with the numbers of the
    # runs' own records, averaged here: one lr factor, so each model has 3 runs
    judged = ("delta-beats-dot", "needle", "lm-order")
    assert all(data[c]["outcome"] in JUDGED for c in judged)
    recall = _record_means(root / "runs", "tiny_recall@1", "accuracy")
    numbers = data["delta-beats-dot"]["numbers"]["deltanet tiny_recall@1 accuracy"]
    assert numbers[0] == pytest.approx(recall["l2"]) and numbers[2] == 3
    dot = data["delta-beats-dot"]["numbers"]["linear-attention tiny_recall@1 accuracy"]
    assert dot[0] == pytest.approx(recall["dot"])
    # the claim task: in no entry (never ranked), trained for the claim's two baselines, judged from them
    assert all("tiny_needle@1" not in e.tasks for e in entries.values())
    needle = _record_means(root / "runs", "tiny_needle@1", "accuracy")
    assert set(needle) == {"l2", "attention"}                  # linear-attention never trained on it
    assert set(data["needle"]["claim_tasks"]) == {"deltanet", "transformer"}
    assert data["needle"]["numbers"]["deltanet tiny_needle@1 accuracy"][0] == pytest.approx(needle["l2"])
    lm = _record_means(root / "runs", "tiny_lm@1", "bits_per_byte")
    assert data["lm-order"]["numbers"]["transformer tiny_lm@1 bits_per_byte"][0] == pytest.approx(lm["attention"])
    for claim in CLAIMS:
        assert claim["source"] in report and claim["claim"] in report
    assert "| transformer |" in report and "bigram" in report and "tiny_lm@1" in report
    assert not any(math.isnan(x) for x in lm.values())
    # the leaderboard page shows the same verdicts, rendered after the last report
    page = (root / "lb" / "README.md").read_text().split("### Published claims")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in page.splitlines() if line.startswith("| ")}
    for claim in CLAIMS:
        assert f"**{data[claim['id']]['outcome']}**" in rows[claim["claim"]]


# Hand-set scores: every run's evaluation returns these values (one per seed, in call order), so the
# verdicts and numbers below are computed by hand, not from the code's own means. The recall claim is
# set up to fail (DeltaNet below linear attention), the other two to hold.
HAND = {("memory", "l2"): {"accuracy": [0.3, 0.4, 0.5], "bits_per_byte": [2.0, 2.1, 2.2]},
        ("memory", "dot"): {"accuracy": [0.6, 0.7, 0.8], "bits_per_byte": [2.5, 2.5, 2.5]},
        ("attention", None): {"accuracy": [0.1, 0.2, 0.3], "bits_per_byte": [3.0, 3.0, 3.0]}}


@pytest.fixture(scope="module")
def hand_set(tmp_path_factory):
    from dataclasses import replace

    import nlsearch.train.loop as loop
    from nlsearch.eval.evaluate import EvalResult
    root = tmp_path_factory.mktemp("hand")
    protocol = write_protocol(root / "p", tasks=("tiny_recall", "tiny_lm"), claims=CLAIMS[:2] + CLAIMS[3:],
                              claim_tasks=[{"task": "tiny_needle@1", "metric": "accuracy", "role": "needle"}])
    dot = {"kind": "memory", "n_heads": 2, "rule": "linear-attention"}
    models = {"transformer": TINY_MODEL, "deltanet": TINY_MEMORY, "linear-attention": {**TINY_MEMORY, "mixer": dot}}
    for name, cfg in models.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    real, calls = loop.evaluate, {}

    def evaluate(model, task, *args, **kwargs):
        mixer = model.cfg.mixer
        key = (mixer.kind, mixer.rule.objective if mixer.kind == "memory" else None)   # deltanet: l2
        n = calls.setdefault((key, task.ref), [0])
        values, seed = HAND[key], n[0] % 3
        n[0] += 1
        rows = real(model, task, *args, **kwargs).rows
        return EvalResult(tuple(replace(r, value=values[r.metric][seed]) if r.metric in values else r for r in rows))

    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(root / "lb"),
            "--runs", str(root / "runs"), "--out", str(root / "out"),
            "--presets", *(str(root / f"{name}.yaml") for name in models)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "evaluate", evaluate)
        assert main(args) == 0
    return root


def test_the_page_quotes_the_report_the_reproduction_ended_with(reproduced):
    """The report is rewritten after the last run with a new time (and its runs count): the page, which
    quotes when and from what the report was written, is rendered from that last report, not an older one."""
    root, _, _ = reproduced
    report = json.loads((root / "out" / "report.json").read_text())
    done = sum(c["done"] for tasks in report["runs"].values() for c in tasks.values())
    needed = sum(c["needed"] for tasks in report["runs"].values() for c in tasks.values())
    facts = f"written {report['written']}, commit {report['commit']}, {done} of {needed} runs finished"
    for page in ("README.md", "index.html"):
        assert facts in (root / "lb" / page).read_text(), page


def test_the_report_judges_hand_set_numbers(hand_set):
    data = {c["id"]: c for c in json.loads((hand_set / "out" / "report.json").read_text())["claims"]}
    recall = data["delta-beats-dot"]
    assert recall["outcome"] == "not reproduced"                          # 0.4 < 0.7, Welch p = 0.02
    assert recall["numbers"]["deltanet tiny_recall@1 accuracy"] == [pytest.approx(0.4), pytest.approx(0.1), 3]
    assert recall["numbers"]["linear-attention tiny_recall@1 accuracy"] == [pytest.approx(0.7), pytest.approx(0.1), 3]
    lm = data["lm-order"]
    assert lm["outcome"] == "reproduced"                                  # 2.1 bpb before 3.0 bpb
    assert lm["numbers"]["deltanet tiny_lm@1 bits_per_byte"] == [pytest.approx(2.1), pytest.approx(0.1), 3]
    assert lm["numbers"]["transformer tiny_lm@1 bits_per_byte"] == [pytest.approx(3.0), pytest.approx(0.0), 3]
    needle = data["needle"]
    assert needle["outcome"] == "unresolved"            # 0.4 > 0.2 on the claim task, but Welch p = 0.07
    assert needle["numbers"]["deltanet tiny_needle@1 accuracy"][:2] == [pytest.approx(0.4), pytest.approx(0.1)]
    assert needle["numbers"]["transformer tiny_needle@1 accuracy"][:2] == [pytest.approx(0.2), pytest.approx(0.1)]
    report = (hand_set / "out" / "report.md").read_text()
    assert "not reproduced" in report and "0.4" in report and "0.7" in report


def test_a_second_reproduction_reuses_the_entries(reproduced, monkeypatch, capsys):
    root, _, args = reproduced
    import nlsearch.leaderboard.reproduce as reproduce_module

    import nlsearch.train as train_module

    scoring = reproduce_module.Scoring
    monkeypatch.setattr(reproduce_module, "Scoring",            # only the claim tasks are scored again ...
                        lambda *a, **k: scoring(*a, **k) if k.get("tasks") else pytest.fail("scored again"))
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("trained again"))   # ... from their runs
    writes, write = [], reproduce_module._write_report
    monkeypatch.setattr(reproduce_module, "_write_report", lambda *a, **k: writes.append(1) or write(*a, **k))
    before = {p: p.read_bytes() for p in (root / "lb" / "entries").rglob("*.json")}
    assert main(args) == 0
    assert {p: p.read_bytes() for p in (root / "lb" / "entries").rglob("*.json")} == before
    assert len(writes) == 4     # first, as each of the two claim-task scorings is complete, last: not per reused run
    out = capsys.readouterr().out
    assert "24 of 24 runs finished already: reused, not logged one by one" in out and "(reused)" not in out


@pytest.mark.slow
def test_parallel_workers_give_the_serial_numbers(reproduced, tmp_path):
    root, _, _ = reproduced
    protocol = load_protocol(write_protocol(tmp_path / "p", tasks=("tiny_recall",)))
    serial = Store(root / "lb").entries()
    ref = [e for e in serial if e.name == "deltanet"][0]
    parallel = score_model(dict(TINY_MEMORY), protocol, protocol.load_budget(), tmp_path / "runs", workers=2)
    got = parallel["tiny_recall@1"]
    assert [s.run.run_dir for s in got.seeds] != [s.run.run_dir for s in ref.tasks["tiny_recall@1"].seeds]
    assert [s.metrics for s in got.seeds] == [s.metrics for s in ref.tasks["tiny_recall@1"].seeds]


@pytest.mark.slow
def test_ray_runs_give_the_serial_numbers(reproduced, tmp_path):
    ray = pytest.importorskip("ray")
    root, _, _ = reproduced
    protocol = load_protocol(write_protocol(tmp_path / "p", tasks=("tiny_recall",)))
    ref = [e for e in Store(root / "lb").entries() if e.name == "transformer"][0]
    try:
        got = score_model(dict(TINY_MODEL), protocol, protocol.load_budget(), tmp_path / "runs", address="local")
    finally:
        ray.shutdown()
    assert [s.metrics for s in got["tiny_recall@1"].seeds] == [s.metrics for s in ref.tasks["tiny_recall@1"].seeds]
    assert all(s.run.run_dir.startswith(str(tmp_path)) for s in got["tiny_recall@1"].seeds)


def test_a_submission_of_a_baselines_config_is_not_taken_as_that_baseline(reproduced, tmp_path):
    from nlsearch.leaderboard.entry import entry_id
    from nlsearch.leaderboard.reproduce import reproduce
    from nlsearch.leaderboard.submit import load_submission
    root, protocol, _ = reproduced
    track = protocol.load_budget("tiny")
    spec = str(root / "transformer.yaml")
    sha = load_submission(spec, protocol).sha256
    store = Store(tmp_path / "lb")
    submitted = make_entry("my-transformer", {}, protocol=protocol.ref, budget=track.ref,
                           protocol_sha256=protocol.sha256())
    submitted = submitted.model_copy(update={"config_sha256": sha, "budget_sha256": track.sha256(),
                                             "id": entry_id(protocol.ref, track.ref, sha, "my-transformer")})
    store.add(submitted)
    with pytest.raises(LeaderboardError, match="baseline transformer: .*as submission 'my-transformer'.*not as a "
                       "baseline"):
        reproduce("tiny", protocol=protocol, root=tmp_path / "lb", runs_dir=tmp_path / "runs", out_dir=tmp_path / "out",
                  baselines=[spec])
    assert not list((tmp_path / "runs").glob("*")) and [e.name for e in store.entries()] == ["my-transformer"]


def test_claims_first_orders_baselines_by_their_cheapest_claim(monkeypatch):
    """Baselines named by the cheapest claim (measured step times of its models) come first, the
    cheaper model first, then the next claim's, then the rest in the given order; an unmeasured
    model's claim goes last."""
    import pandas as pd

    from nlsearch.bench import estimate
    from nlsearch.leaderboard.claims import Claim
    from nlsearch.leaderboard.reproduce import claims_first

    table = pd.DataFrame({"preset": ["fast", "slow", "mid"], "T": [512] * 3, "B": [8] * 3,
                          "seconds": [1.0, 9.0, 3.0], "hardware": ["x, 1 threads"] * 3})
    monkeypatch.setattr(estimate, "load_timing", lambda path=None: table)
    claims = [Claim(id="a", claim="a", source="s", budgets=["cpu"], source_setting=SETTING,
                    check={"kind": "beats", "winners": ["slow"], "losers": ["fast"], "roles": ["recall"]}),
              Claim(id="b", claim="b", source="s", budgets=["cpu"], source_setting=SETTING,
                    check={"kind": "order", "role": "lm", "models": ["mid", "fast"]}),
              Claim(id="c", claim="c", source="s", budgets=["cpu"], source_setting=SETTING,
                    check={"kind": "at_least", "model": "unmeasured", "role": "lm", "value": 1.0})]
    specs = ["other", "unmeasured", "slow", "mid", "fast"]
    assert claims_first(specs, claims) == ["fast", "mid", "slow", "unmeasured", "other"]


def test_within_a_baseline_the_tasks_a_claim_reads_run_first(tmp_path, monkeypatch):
    """A claim reading the lm role of two baselines and one reading a claim task (needle): every lm and
    needle run of either baseline trains before any recall run, though recall is the protocol's first
    task and needle a task of another scoring; a verdict waits on them only."""
    import nlsearch.train as train_module

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall", "tiny_lm"), claims=[CLAIMS[1], CLAIMS[3]],
                              claim_tasks=[{"task": "tiny_needle@1", "metric": "accuracy", "role": "needle"}])
    models = {"transformer": TINY_MODEL, "deltanet": TINY_MEMORY}
    for name, cfg in models.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    order = []
    real = train_module.train

    def train(cfg, task, *a, **k):
        order.append(("transformer" if cfg.mixer.kind == "attention" else "deltanet", task.spec.name))
        return real(cfg, task, *a, **k)

    monkeypatch.setattr(train_module, "train", train)
    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(tmp_path / "lb"),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--presets", *(str(tmp_path / f"{name}.yaml") for name in models)]
    assert main(args) == 0
    assert len(order) == 18
    for name in models:
        tasks = [task for model, task in order if model == name]
        assert tasks == ["tiny_lm"] * 3 + ["tiny_needle"] * 3 + ["tiny_recall"] * 3, (name, order)
    assert {task for _, task in order[:12]} == {"tiny_lm", "tiny_needle"}     # every claim's runs, then the rest
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(c["outcome"] in JUDGED for c in report["claims"])


def test_hours_starts_only_the_runs_that_end_in_time_and_the_next_call_goes_on(tmp_path, monkeypatch, capsys):
    """``--hours``: runs whose estimate would end after the deadline are not started (here the lm runs,
    made to look long), the others train, the baseline stays pending and the command still exits 0,
    naming what it left; the next call without a limit finishes the baseline. A bad value is refused
    before anything is written."""
    import nlsearch.bench.estimate as estimate
    import nlsearch.train as train_module

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall", "tiny_lm"))
    (tmp_path / "transformer.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    trained = []
    real = train_module.train
    monkeypatch.setattr(train_module, "train", lambda cfg, task, *a, **k: trained.append(task.spec.name) or
                        real(cfg, task, *a, **k))
    monkeypatch.setattr(estimate, "seconds_left",
                        lambda plan, *a, **k: 1e6 if plan.task.spec.name == "tiny_lm" else 1.0)
    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(tmp_path / "lb"),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--presets", str(tmp_path / "transformer.yaml")]
    with pytest.raises(SystemExit) as bad:
        main(args + ["--hours", "-1"])
    assert bad.value.code == 2 and "--hours takes a positive number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    gpu = write_protocol(tmp_path / "g", tasks=("tiny_recall",), budgets=["tiny_budget.yaml", "gpu@1"])
    gpu_args = [*args[:2], str(gpu), "--budget", "gpu", *args[5:]]
    assert main(gpu_args + ["--hours", "1"]) == 2                  # CPU step times say nothing of a GPU track
    assert "trains on GPUs" in capsys.readouterr().out and not (tmp_path / "runs").exists()
    assert main(args + ["--hours", "1"]) == 0
    assert trained == ["tiny_recall"] * 3
    assert "3 run(s) not started" in capsys.readouterr().out
    assert not Store(tmp_path / "lb").entries()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["runs"]["transformer"]["tiny_lm@1"]["done"] == 0
    assert report["runs"]["transformer"]["tiny_recall@1"]["done"] == 3
    assert main(args) == 0
    assert trained == ["tiny_recall"] * 3 + ["tiny_lm"] * 3
    assert [e.name for e in Store(tmp_path / "lb").entries()] == ["transformer"]


def test_a_claim_reading_a_baseline_still_to_score_is_pending():
    from nlsearch.leaderboard.claims import Claim, judge

    claim = Claim(id="a", claim="a", source="s", budgets=["cpu"], source_setting=SETTING,
                  check={"kind": "beats", "winners": ["x"], "losers": ["y"], "roles": ["recall"]})
    verdict = judge(claim, [], None, "cpu", pending=["y", "z"])
    assert verdict.outcome == "pending" and verdict.reason == "runs missing for y"
    # a claim the track cannot test is said so at once, not left pending until its models are scored
    elsewhere = judge(claim.model_copy(update={"budgets": ("gpu",)}), [], None, "cpu", pending=["y"])
    assert elsewhere.outcome == "not testable" and "testable at ['gpu']" in elsewhere.reason
    assert "runs missing for y" in elsewhere.reason


def test_the_report_grows_with_every_run_and_says_what_each_pending_claim_waits_for(reproduced, tmp_path):
    """From a runs folder where some runs are missing (a reproduction in progress), the report shows the
    seeds done per cell with their mean, the runs done per baseline, and each pending claim names the
    runs it still waits for; the means are checked against the runs' own records."""
    import shutil

    from nlsearch.leaderboard.claims import load_claims
    from nlsearch.leaderboard.reproduce import _write_report

    root, protocol, _ = reproduced
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    gone = [d for d in runs.glob("tiny_recall@1/*/*seed[12]") if _objective(d) == "l2"]        # DeltaNet's
    assert len(gone) == 2, gone
    for folder in gone:
        shutil.rmtree(folder)
    kept = json.loads(next(gone[0].parent.glob("*seed0/record.json")).read_text())["metrics"]["accuracy"]
    specs = [str(root / f"{n}.yaml") for n in ("transformer", "deltanet", "linear-attention")]
    claims = load_claims(protocol.claims_path(), protocol).claims
    track = protocol.load_budget("tiny")
    out = tmp_path / "out"
    _write_report(protocol, track, Store(tmp_path / "lb"), claims, None, specs, ["transformer", "deltanet",
                  "linear-attention"], out, {}, runs)
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| deltanet |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "7/9"                   # 2 ranked tasks x 3 seeds, its claim task x 3, less the 2 removed
    assert cells[2] == f"{kept:.4f} (n=1)"     # the one seed left on tiny_recall, as its record says
    assert cells[3].endswith("(n=3)") and cells[-1] == "-"       # tiny_lm complete; no entry on this leaderboard
    assert "measured step time (`reproduce --dry-run`): 24 runs, 22 finished, 2 to run: about" in report
    from nlsearch.leaderboard.reproduce import _planned   # each finished run carries its record's speed
    planned = _planned(specs, protocol, track, claims, Store(tmp_path / "lb"), runs)
    speeds = sorted(1 / json.loads(r.read_text())["tokens_per_cpu_s"] for r in runs.rglob("record.json"))
    assert len(speeds) == 22 and sorted(r.measured for r in planned if r.finished) == pytest.approx(speeds)
    data = json.loads((out / "report.json").read_text())
    assert data["runs"]["deltanet"]["tiny_recall@1"]["done"] == 1
    assert data["runs"]["deltanet"]["tiny_recall@1"]["mean_std_n"][0] == pytest.approx(kept)
    delta = next(c for c in data["claims"] if c["id"] == "delta-beats-dot")
    assert delta["outcome"] == "pending" and "deltanet 7/9 runs done" in delta["reason"]
    assert "linear-attention" not in delta["reason"]          # the task the claim reads of it is complete


def test_a_claim_is_judged_once_the_tasks_it_reads_are_complete_before_the_baselines_are(reproduced, tmp_path):
    """No baseline is an entry yet and DeltaNet misses two recall runs: the claims that read only tasks
    whose runs are all back (lm order, the needle claim task) are judged already, with the numbers and
    verdicts of the finished reproduction, and say so; the claim reading DeltaNet's recall waits."""
    import shutil

    from nlsearch.leaderboard.claims import load_claims
    from nlsearch.leaderboard.reproduce import _write_report

    root, protocol, _ = reproduced
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    for folder in [d for d in runs.glob("tiny_recall@1/*/*seed[12]") if _objective(d) == "l2"]:
        shutil.rmtree(folder)
    specs = [str(root / f"{n}.yaml") for n in ("transformer", "deltanet", "linear-attention")]
    claims = load_claims(protocol.claims_path(), protocol).claims
    _write_report(protocol, protocol.load_budget("tiny"), Store(tmp_path / "lb"), claims, None, specs,
                  ["transformer", "deltanet", "linear-attention"], tmp_path / "out", {}, runs)
    early = {c["id"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["claims"]}
    final = {c["id"]: c for c in json.loads((root / "out" / "report.json").read_text())["claims"]}
    for claim in ("lm-order", "needle"):
        assert early[claim]["outcome"] == final[claim]["outcome"] in JUDGED
        assert early[claim]["numbers"] == final[claim]["numbers"] and early[claim]["numbers"]
        assert "judged from the finished runs of " in early[claim]["reason"]
        assert "finished runs" not in final[claim]["reason"]
    assert early["delta-beats-dot"]["outcome"] == "pending"


def test_a_report_written_again_judges_finished_baselines_from_their_runs(reproduced, tmp_path):
    """A reproduction called again writes its report before its loop reaches each baseline: those
    already entries whose claim-task runs are all in the runs folder are judged at once, with the same
    verdicts and numbers as the finished reproduction's report (not "pending" until re-scored)."""
    from nlsearch.leaderboard.claims import load_claims
    from nlsearch.leaderboard.reproduce import _write_report

    root, protocol, _ = reproduced
    specs = [str(root / f"{n}.yaml") for n in ("transformer", "deltanet", "linear-attention")]
    claims = load_claims(protocol.claims_path(), protocol).claims
    out = tmp_path / "out"
    _write_report(protocol, protocol.load_budget("tiny"), Store(root / "lb"), claims, None, specs,
                  ["transformer", "deltanet", "linear-attention"], out, {}, root / "runs")
    final = {c["id"]: c for c in json.loads((root / "out" / "report.json").read_text())["claims"]}
    first = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert final["needle"]["claim_tasks"]            # a claim that reads a claim task's runs is among them
    assert not any(c["outcome"] == "pending" for c in first.values()), first
    for cid, claim in final.items():
        assert (first[cid]["outcome"], first[cid]["numbers"]) == (claim["outcome"], claim["numbers"]), cid
    missing = tmp_path / "runs"                      # one claim-task run gone: that baseline waits for it
    import shutil
    shutil.copytree(root / "runs", missing)
    shutil.rmtree(next(d for d in missing.glob("tiny_needle@1/*/*seed2") if _objective(d) == "l2"))
    _write_report(protocol, protocol.load_budget("tiny"), Store(root / "lb"), claims, None, specs,
                  ["transformer", "deltanet", "linear-attention"], out, {}, missing)
    again = {c["id"]: c for c in json.loads((out / "report.json").read_text())["claims"]}
    assert again["needle"]["outcome"] == "pending" and "deltanet" in again["needle"]["reason"]


def _objective(run_dir):
    """The memory objective of the config a finished run's record holds (None: attention)."""
    rule = json.loads((run_dir / "record.json").read_text())["config"]["mixer"].get("rule")
    return rule["objective"] if isinstance(rule, dict) else None


def test_a_run_that_raises_is_an_error_and_a_diverged_one_a_failure(tmp_path, monkeypatch):
    """A diverged loss is a training outcome (``failed``, ranked worst); any other exception is an
    ``error``: no outcome."""
    import nlsearch.train as train_module
    from nlsearch.leaderboard.runner import Job, run_job
    from nlsearch.train import NonFiniteLossError

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall",))
    job = Job(dict(TINY_MODEL), "tiny_recall@1", 0, 1.0, str(tmp_path / "p" / "tiny_budget.yaml"),
              str(tmp_path / "runs"), str(protocol.parent / "tasks"))
    for raised, status in ((NonFiniteLossError(3, float("nan")), "failed: NonFiniteLossError"),
                           (MemoryError("out of memory"), "error: MemoryError: out of memory")):
        def train(*_a, _err=raised, **_k):
            raise _err
        monkeypatch.setattr(train_module, "train", train)
        assert run_job(job).status.startswith(status)
    # after Ctrl-C, an error a library made of the KeyboardInterrupt is the interrupt, not a result
    import nlsearch.runtime as runtime
    monkeypatch.setitem(runtime._interrupts, "seen", True)
    with pytest.raises(KeyboardInterrupt):
        run_job(job)


def test_a_baseline_whose_runs_raise_is_not_an_entry_and_the_others_are(tmp_path, monkeypatch, capsys):
    """reproduce: runs that raise leave their baseline off the leaderboard (pending in the report, exit 1,
    the error named), the baselines after it are still scored and added, and the next call scores it."""
    import nlsearch.leaderboard.reproduce as reproduce_module
    import nlsearch.train as train_module

    monkeypatch.setattr(reproduce_module, "claims_first", lambda specs, _claims: list(specs))  # deltanet first

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall",), claims=CLAIMS[:1])
    dot = {"kind": "memory", "n_heads": 2, "rule": "linear-attention"}
    models = {"deltanet": TINY_MEMORY, "linear-attention": {**TINY_MEMORY, "mixer": dot}}
    for name, cfg in models.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    args = ["reproduce", "--protocol", str(protocol), "--budget", "tiny", "--dir", str(tmp_path / "lb"),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--presets", *(str(tmp_path / f"{name}.yaml") for name in models)]
    real = train_module.train

    def train(cfg, *a, **k):
        if cfg.mixer.kind == "memory" and cfg.mixer.rule.objective == "l2" and a[2] == 1:   # deltanet, seed 1
            raise RuntimeError("a worker lost its node")
        return real(cfg, *a, **k)

    monkeypatch.setattr(train_module, "train", train)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "baseline deltanet" in out and "a worker lost its node" in out and "seed 1" in out
    assert out.index("a worker lost its node") < out.index("linear-attention: added")        # then the next one
    assert {e.name for e in Store(tmp_path / "lb").entries()} == {"linear-attention"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {c["id"]: c["outcome"] for c in report["claims"]} == {"delta-beats-dot": "pending"}
    monkeypatch.setattr(train_module, "train", real)
    assert main(args) == 0
    assert {e.name for e in Store(tmp_path / "lb").entries()} == {"deltanet", "linear-attention"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["claims"][0]["outcome"] in JUDGED


def test_a_worker_that_dies_gives_an_error_result_and_the_other_jobs_go_on(tmp_path, monkeypatch):
    """A worker process killed mid-job (out of memory, a signal) answers nothing: its job becomes an
    ``error`` result and the pool's other jobs still come back."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import nlsearch.leaderboard.runner as runner
    from nlsearch.leaderboard.runner import Job, JobResult, run_jobs

    class Pool:                                   # runs jobs in process; the second one's worker "dies"
        def __init__(self, *a, **k):
            self.n = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, job):
            future, self.n = Future(), self.n + 1
            if self.n == 2:
                future.set_exception(BrokenProcessPool("a process in the pool was terminated abruptly"))
            else:
                future.set_result(JobResult(job, "completed", False, {"metrics": {}}, None))
            return future

    monkeypatch.setattr(runner.futures, "ProcessPoolExecutor", Pool)
    jobs = [Job({"name": f"m{i}"}, "t@1", i, 1.0, "tiny", str(tmp_path)) for i in range(3)]
    seen = []
    results = run_jobs(jobs, workers=2, on_result=seen.append)
    assert [r.status for r in results] == ["completed", results[1].status, "completed"]
    assert results[1].status.startswith("error: worker lost (BrokenProcessPool") and len(seen) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name, code, said", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_ctrl_c_stops_every_worker_at_once_and_starts_no_queued_run(tmp_path, name, code, said):
    """Ctrl-C (SIGINT to the terminal's process group) during ``reproduce --workers 2``: the command says
    so and exits 130 at once, no traceback, the third run (already handed to a worker's queue) never
    starts, and no worker is left behind. SIGTERM to the group (``kill``, a batch system's time limit)
    takes the same path and exits 143, without the pool's leaked-semaphore warnings."""
    import os
    import signal
    import subprocess
    import sys
    import time

    protocol = write_protocol(tmp_path / "p", tasks=("tiny_recall",), steps=100_000)   # minutes per run
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(TINY_MEMORY))
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "nlsearch.cli", "reproduce", "--protocol", str(protocol), "--budget", "tiny",
            "--dir", str(tmp_path / "lb"), "--runs", str(runs), "--out", str(tmp_path / "out"),
            "--presets", str(tmp_path / "m.yaml"), "--workers", "2"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as in a terminal
    try:
        deadline = time.monotonic() + 120
        while len(list(runs.glob("*/*/*seed*"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert len(list(runs.glob("*/*/*seed*"))) == 2, "the first two runs never started"
        time.sleep(2)
        os.killpg(proc.pid, getattr(signal, name))
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, out
    assert f"interrupted ({said})" in out and "Traceback" not in out and "leaked" not in out
    assert sorted(p.name for p in runs.glob("*/*/*seed*")) == ["tiny@1-seed0", "tiny@1-seed1"]
    for _ in range(20):                                   # the workers are gone with the command
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a worker process outlived the interrupted command")


def test_ctrl_c_on_a_ray_cluster_cancels_the_tasks_still_running_or_queued(tmp_path, monkeypatch):
    """``--address``: Ctrl-C while waiting for the cluster cancels every task not yet collected (a
    cluster would otherwise go on training for a command that has ended); finished ones are kept."""
    import sys
    import types

    from nlsearch.leaderboard.runner import Job, JobResult, run_jobs

    cancelled, calls = [], {"wait": 0}

    def wait(pending, num_returns=1):
        calls["wait"] += 1
        if calls["wait"] == 2:
            raise KeyboardInterrupt
        return pending[:1], pending[1:]

    class Remote:
        def options(self, **_k):
            return self

        def remote(self, job):
            return job.seed                                                   # an object ref stand-in

    def cancel(ref, force):
        cancelled.append((ref, force))

    fake = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 2.0},
                                 remote=lambda fn: Remote(), wait=wait, cancel=cancel,
                                 get=lambda ref: JobResult(jobs[ref], "completed", False, {"metrics": {}}, None))
    monkeypatch.setitem(sys.modules, "ray", fake)
    jobs = [Job({"name": "m"}, "t@1", i, 1.0, "tiny", str(tmp_path)) for i in range(3)]
    seen = []
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, address="ray://cluster:10001", on_result=seen.append)
    assert [r.job.seed for r in seen] == [0] and cancelled == [(1, True), (2, True)]
