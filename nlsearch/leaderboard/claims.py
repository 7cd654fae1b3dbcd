"""Published claims a small-scale reproduction can test, and their verdicts from leaderboard entries.

A claims file (``leaderboard/claims.yaml``, named by the protocol) lists claims with their source, the
source's own setting, and a check over the protocol's task roles (ranked tasks and ``claim_tasks``)
and baseline names (the baselines are named after their presets):

- ``at_least``: ``model``'s mean on ``role`` is at least ``value`` (at most, for a lower-is-better metric);
- ``beats``: on every role in ``roles``, every model in ``winners`` is better than every one in ``losers``;
- ``order``: on ``role``, ``models`` are ordered best first, each better than the next;
- ``gap_grows``: the lead of ``reference`` over each of ``models`` is larger on ``roles[1]`` than on
  ``roles[0]`` (recurrent models fall behind as the task gets harder).

``metric`` names the metric a check reads when it is not the role's ranked one (e.g. ``bwt``, the
forgetting a continual task reports beside its ranked ``acc``); it must be one the tasks declare.
``length`` says where a check reads the metric: ``headline`` (the task's ranked metric, which may
average several eval lengths), ``longest`` (the longest eval length of the track) or a length in
tokens (``accuracy@128``). A check reads the metric where its source measured it: a headline that
averages lengths the source did not evaluate, or a length it did not, is refused at load.

``seeds`` (optional) is the number of seeds the check reads when it is more than the protocol's: the
claim's models then train the next seeds too (:func:`claim_seeds`) on the tasks it reads, at the lr
factor their sweep chose (``reproduce.claim_seed_tasks``: claims that read more seeds of a model on a
task share its runs); entries, ranks and the other claims keep the protocol's seeds.

Rules a claims file is held to when loaded with its protocol (:func:`load_claims`):

- every role a check reads is a protocol role;
- a check over several roles compares tasks that differ only in the keys the claim declares it
  ``varies`` (generator parameters, or ``lengths``): otherwise the gap could come from anything
  else that changed between them, and the claim is refused naming the keys that differ.

Verdicts. Every comparison a check makes (a pair of models on a role, a model against a bound, a lead
on one role against the lead on another) is a two-sided t-test of a difference of seed means
(:mod:`nlsearch.stats`: Welch's for two means, one-sample against a bound, Welch-Satterthwaite degrees
of freedom for four), the runs of different models and tasks being independent trainings; a margin
counts only beyond seed noise, at level :data:`ALPHA`:

- ``reproduced``: every comparison goes the claimed way and its test resolves it (each at ``ALPHA``:
  all of them must hold, so no correction is needed);
- ``not reproduced``: some comparison goes against the claim and its test resolves it after Holm's
  adjustment over the check's comparisons (any one of them refutes the claim, so the family is
  corrected);
- ``unresolved``: neither: the seeds do not resolve some comparison (named with its gap and p),
  whichever way its means lean;
- ``pending``: a baseline it reads is still to be scored, or (a claim that reads more seeds) a run of any
  of its seeds is not in the runs folder yet;
- ``not testable``: the track is not one the claim lists, a role or model has no finite number, or the
  track's training scale is far below the source's (under :data:`MIN_SCALE_RATIO` of its training
  sequences or tokens) *and* the repository's own calibration says the effect cannot appear at that
  budget (the claim's ``calibration`` entry for the budget names the finding).

A ``not reproduced`` or ``unresolved`` verdict says whether a budget effect we can name (the claim's
calibration finding for the track) explains the missing effect. A verdict given at a scale far below
the source's says so, with both scales. The report prints each model's mean, std and number of seeds
beside the verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import Field, PositiveInt, TypeAdapter, model_validator

from nlsearch.config import ConfigError, Strict, read_yaml_mapping
from nlsearch.leaderboard.entry import Entry, TaskResult
from nlsearch.leaderboard.protocol import ROLE, Protocol
from nlsearch.stats import Welch, contrast, welch_summaries

MIN_SCALE_RATIO = 0.01     # a track below 1/100 of the source's training scale is "far below" it
ALPHA = 0.05               # the level of every comparison's t-test: a margin must be beyond seed noise
TEST_NAME = "t-test of the seed means"       # Welch's for two models, one-sample against a bound
OUTCOMES = ("reproduced", "not reproduced", "unresolved", "not testable", "pending")
JUDGED = OUTCOMES[:3]      # the outcomes the numbers decide


def tally(outcomes: Sequence[str]) -> str:
    """'1 reproduced, 2 not reproduced, ...' over ``outcomes`` (pending only when there is one)."""
    counts = {o: sum(x == o for x in outcomes) for o in OUTCOMES}
    return (f"{counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
            f"{counts['unresolved']} unresolved by the seeds, {counts['not testable']} not testable at this budget"
            + (f", {counts['pending']} pending" if counts["pending"] else ""))


class Check(Strict):
    kind: Literal["at_least", "beats", "order", "gap_grows"]
    model: Optional[str] = None
    value: Optional[float] = None
    roles: Tuple[str, ...] = ()
    role: Optional[str] = Field(None, pattern=ROLE)
    winners: Tuple[str, ...] = ()
    losers: Tuple[str, ...] = ()
    models: Tuple[str, ...] = ()
    reference: Optional[str] = None
    length: Union[PositiveInt, Literal["headline", "longest"]] = "headline"
    metric: Optional[str] = None          # a metric the roles' tasks report (default: each task's ranked one)

    @model_validator(mode="after")
    def _has_what_its_kind_compares(self) -> "Check":
        needed = {"at_least": ("model", "role", "value"), "beats": ("winners", "losers", "roles"),
                  "order": ("models", "role"), "gap_grows": ("reference", "models", "roles")}[self.kind]
        missing = [k for k in needed if getattr(self, k) in (None, ())]
        if missing:
            raise ValueError(f"a {self.kind} check needs {', '.join(missing)}")
        if self.kind == "order" and len(self.models) < 2:
            raise ValueError(f"an order check compares at least two models, got {list(self.models)}")
        return self

    def read_roles(self) -> Tuple[str, ...]:
        return self.roles + ((self.role,) if self.role else ())


class SourceSetting(Strict):
    """What the source measured, machine-readable: the report prints it beside our setting."""

    task: Dict[str, Union[int, float, bool, str]]   # its task's parameters, in our generators' names
    eval_lengths: Tuple[PositiveInt, ...] = ()        # where it evaluated (empty: not length-resolved)
    metric: str                                       # what it reports
    models: Tuple[str, ...] = Field(min_length=1)     # the models it measured, in its own names
    train_sequences: Optional[PositiveInt] = None     # training scale: sequences seen (examples x epochs)
    train_tokens: Optional[PositiveInt] = None        # or tokens seen
    scale: str = ""                                   # how the scale was counted, from the source
    extrapolates: Optional[str] = None                # where our check goes beyond what it measured


class Claim(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    claim: str
    source: str
    budgets: Tuple[str, ...] = Field(min_length=1)      # budget names at which the claim is testable
    source_setting: SourceSetting
    varies: Tuple[str, ...] = ()                         # task keys a multi-role check's tasks may differ in
    calibration: Dict[str, str] = {}                     # budget name -> finding: the effect cannot appear
    # seeds the check reads (None: the protocol's): more trains the claim's models on the tasks it reads
    # on the next seeds too, never ranked (:func:`claim_seeds`)
    seeds: Optional[PositiveInt] = None
    check: Check

    def models(self) -> Tuple[str, ...]:
        """The baselines the check reads, in the order it names them."""
        c = self.check
        named = [c.model, *c.winners, *c.losers, c.reference, *c.models]
        return tuple(dict.fromkeys(m for m in named if m))


class ClaimsFile(Strict):
    claims: Tuple[Claim, ...]


@dataclass
class Verdict:
    claim: Claim
    outcome: str                                         # one of OUTCOMES
    reason: str
    numbers: Dict[str, Tuple[float, float, int]] = field(default_factory=dict)   # label -> mean, std, n
    scale: Optional[Tuple[int, int, str]] = None        # ours, the source's, unit (sequences | tokens)


def claim_seeds(claim: Claim, protocol: Protocol) -> Tuple[int, ...]:
    """The seeds ``claim``'s check reads: the protocol's, then (``claim.seeds`` beyond them) the
    integers after the largest, in order."""
    ours = tuple(protocol.seeds)
    more = max(0, (claim.seeds or len(ours)) - len(ours))
    return ours + tuple(range(max(ours) + 1, max(ours) + 1 + more))


def extra_seeds(claim: Claim, protocol: Protocol) -> Tuple[int, ...]:
    """The seeds ``claim`` reads beyond the protocol's (none for most claims)."""
    return claim_seeds(claim, protocol)[len(protocol.seeds):]


def load_claims(path: Path, protocol: Optional[Protocol] = None) -> ClaimsFile:
    """The claims in ``path``; with ``protocol``, also held to its roles and tasks (module docstring):
    raises ConfigError naming the file, the claim and what is wrong."""
    data = read_yaml_mapping(path)
    try:
        claims = TypeAdapter(ClaimsFile).validate_python(data)
    except Exception as err:                             # noqa: BLE001 - reported with the file name
        raise ConfigError(f"{path}: invalid claims file: {err}") from None
    if protocol is not None:
        for claim in claims.claims:
            try:
                check_claim(claim, protocol)
            except ValueError as err:
                raise ConfigError(f"{path}: claim {claim.id!r}: {err}") from None
    return claims


def task_setting(spec) -> Dict[str, Any]:
    """A task spec as the flat keys a claim may vary: the generator, its parameters and ``lengths``."""
    return {"generator": spec.generator.name, **spec.generator.params,
            "lengths": (tuple(spec.lengths.train), tuple(spec.lengths.eval))}


def check_claim(claim: Claim, protocol: Protocol) -> None:
    """Raises ValueError when ``claim`` reads a role the protocol lacks, compares tasks that differ in
    more than it ``varies``, or reads lengths its source did not evaluate."""
    from nlsearch.tasks import load_task

    check, roles = claim.check, protocol.by_role()
    if claim.seeds is not None and claim.seeds < len(protocol.seeds):
        raise ValueError(f"seeds {claim.seeds} is fewer than the protocol's {len(protocol.seeds)} "
                         f"({list(protocol.seeds)}): a claim reads every seed its models were ranked with")
    missing = [r for r in check.read_roles() if r not in roles]
    if missing:
        raise ValueError(f"roles {missing} are not protocol roles {sorted(roles)}")
    if check.kind == "gap_grows" and len(check.roles) != 2:
        raise ValueError(f"gap_grows compares two roles (easy, hard), got {list(check.roles)}")
    specs = {r: load_task(roles[r].task, protocol.resolve_tasks_dir()).spec for r in check.read_roles()}
    if len(specs) > 1:
        settings = {r: task_setting(s) for r, s in specs.items()}
        first = next(iter(settings.values()))
        keys = sorted({k for s in settings.values() for k in s})
        differ = [k for k in keys if any(s.get(k) != first.get(k) for s in settings.values())]
        extra = [k for k in differ if k not in claim.varies]
        if extra:
            shown = "; ".join(f"{k}: " + ", ".join(f"{r}={settings[r].get(k)}" for r in settings) for k in extra)
            raise ValueError(f"its roles' tasks differ in {extra}, which the claim does not vary "
                             f"(varies: {list(claim.varies)}): {shown}")
    for role, spec in specs.items() if check.metric else ():
        declared = [m.name for m in spec.metrics]
        if check.metric not in declared:
            raise ValueError(f"check.metric {check.metric!r} is not a metric of {role}'s task ({declared})")
    measured = set(claim.source_setting.eval_lengths)
    if measured and check.length == "headline":
        for role, spec in specs.items():
            if set(spec.lengths.eval) - measured:
                raise ValueError(f"reads {role}'s headline, which averages eval lengths {list(spec.lengths.eval)}; "
                                 f"the source evaluated at {sorted(measured)}: set check.length to one of them")
    if measured and isinstance(check.length, int) and check.length not in measured:
        raise ValueError(f"check.length {check.length} is not a length the source evaluated ({sorted(measured)})")


def budget_scale(budget, task, unit: str) -> int:
    """Training sequences (or tokens) a track gives ``task``: steps x batch (per phase, for a continual
    task), times the mean train length for tokens."""
    from nlsearch.budgets import task_kind

    rule = getattr(budget, task_kind(task))
    sequences = rule.steps * rule.batch_size * len(task.phase_names())
    if unit == "sequences":
        return sequences
    lengths = rule.train_lengths or task.spec.lengths.train
    return int(sequences * sum(lengths) / len(lengths))


class _Untestable(Exception):
    pass


class _Lookup:
    """Means by (model, role) from the baseline entries of one track (``nlsearch reproduce`` measured
    every seed of them; a submission, whose numbers may be partly claimed, never stands in for a
    baseline whatever its name) and from the claim tasks' results, in 'higher is better' orientation."""

    def __init__(self, entries: List[Entry], protocol: Protocol, length: Union[int, str],
                 extra: Optional[Mapping[str, Mapping[str, TaskResult]]] = None, metric: Optional[str] = None,
                 measured: Optional[Mapping[str, Mapping[str, TaskResult]]] = None):
        baselines = {e.name: e for e in entries if e.kind == "baseline" and e.verification is None}
        self.results: Dict[str, Dict[str, TaskResult]] = {n: dict(e.tasks) for n, e in baselines.items()}
        for name, tasks in (measured or {}).items():      # a baseline still being scored: its finished tasks
            for task, result in tasks.items():            # (beside its entry's, which stand where both are)
                self.results.setdefault(name, {}).setdefault(task, result)
        for name, tasks in (extra or {}).items():
            if name in self.results:                      # claim tasks count only beside a measured baseline
                self.results[name].update(tasks)
        self.roles = protocol.by_role()
        self.length, self.metric = length, metric
        self.numbers: Dict[str, Tuple[float, float, int]] = {}
        self.spread: Dict[Tuple[str, str], Tuple[float, int]] = {}   # (model, role) -> (std, n) over seeds

    def sample(self, model: str, role: str) -> Tuple[float, float, int]:
        """``model``'s (mean, std, n) on ``role``, the mean in 'higher is better' orientation."""
        mean, _ = self.get(model, role)
        return (mean, *self.spread[(model, role)])

    def get(self, model: str, role: str) -> Tuple[float, bool]:
        if role not in self.roles:
            raise _Untestable(f"the protocol has no {role!r} task")
        tasks = self.results.get(model)
        if tasks is None:
            raise _Untestable(f"no baseline named {model!r} measured on this track")
        result = tasks.get(self.roles[role].task)
        if result is None:
            raise _Untestable(f"{model} has no result on {self.roles[role].task}")
        metric = self.metric or result.metric
        hib = result.directions.get(metric, result.higher_is_better)
        if self.length == "longest":
            lengths = sorted(result.per_length(metric))
            metric = f"{metric}@{lengths[-1]}" if lengths else metric
        elif isinstance(self.length, int):
            metric = f"{metric}@{self.length}"
        mean, std, n = result.aggregate(metric)
        self.numbers[f"{model} {result.task} {metric}"] = (mean, std, n)
        self.spread[(model, role)] = (std, n)
        if math.isnan(mean):
            raise _Untestable(f"{model} has no finite {metric} on {result.task}")
        return (mean if hib else -mean), hib


@dataclass
class _Comparison:
    label: str            # what is compared, e.g. "hope vs transformer on continual"
    test: Welch           # of (claimed better) - (claimed worse), oriented so that > 0 is the claim's way
    against_p: float = math.nan    # its p adjusted (Holm) over the check's comparisons: for "against"

    def state(self, alpha: float) -> str:
        """'holds' (resolved the claim's way at ``alpha``), 'fails' (resolved against it, at ``alpha``
        after Holm's adjustment over the check's comparisons), else 'unresolved'."""
        if self.test.diff > 0 and self.test.resolved(alpha):
            return "holds"
        if self.test.diff < 0 and self.against_p < alpha:
            return "fails"
        return "unresolved"

    def text(self) -> str:
        if math.isnan(self.test.p):
            return f"{self.label} (gap {self.test.diff:+.4g}; no test: a side has fewer than two seeds)"
        holm = (f", Holm-adjusted {self.against_p:.2g}" if self.test.diff < 0 and self.against_p != self.test.p
                else "")
        return f"{self.label} (gap {self.test.diff:+.4g}, p = {self.test.p:.2g}{holm})"


def _holm(comparisons: Sequence[_Comparison]) -> None:
    """Sets each comparison's ``against_p``: Holm's step-down adjustment of the p-values over all of
    them (a claim is refuted by any one comparison going against it, so the chance of refuting a true
    claim must hold over the family); NaN p-values stay NaN and count in the family."""
    order = sorted(range(len(comparisons)), key=lambda i: (math.isnan(comparisons[i].test.p), comparisons[i].test.p))
    m, running = len(comparisons), 0.0
    for rank, i in enumerate(order):
        p = comparisons[i].test.p
        if math.isnan(p):
            comparisons[i].against_p = math.nan
            continue
        running = max(running, min(1.0, (m - rank) * p))
        comparisons[i].against_p = running


def _pair(look: _Lookup, better: str, worse: str, role: str, label: str) -> _Comparison:
    return _Comparison(label, welch_summaries(look.sample(better, role), look.sample(worse, role)))


def _comparisons(check: Check, look: _Lookup) -> Tuple[str, List[_Comparison]]:
    """What the check claims, and its comparisons, each oriented so that a positive gap is the claim's way
    (every number is looked up, so the report shows them all)."""
    if check.kind == "at_least":
        mean, hib = look.get(check.model, check.role)
        std, n = look.spread[(check.model, check.role)]
        bound = check.value if hib else -check.value
        label = f"{check.model} {'≥' if hib else '≤'} {check.value}"
        return label, [_Comparison(label, contrast([(1.0, mean, std, n)], bound))]
    if check.kind == "beats":
        many = len(check.roles) > 1
        pairs = [_pair(look, w, lo, r, f"{w} vs {lo}" + (f" on {r}" if many else ""))
                 for r in check.roles for w in check.winners for lo in check.losers]
        return f"{', '.join(check.winners)} better than {', '.join(check.losers)} on {', '.join(check.roles)}", pairs
    if check.kind == "order":
        pairs = [_pair(look, a, b, check.role, f"{a} vs {b}") for a, b in zip(check.models, check.models[1:])]
        return f"best first: {' > '.join(check.models)} on {check.role}", pairs
    easy, hard = check.roles[0], check.roles[1]
    ref = check.reference
    out = []
    for m in check.models:                 # (ref - m) on hard minus (ref - m) on easy, > 0: the lead grows
        samples = [look.sample(x, r) for x, r in ((ref, hard), (m, hard), (ref, easy), (m, easy))]
        terms = [(c, mean, std, n) for c, (mean, std, n) in zip((1.0, -1.0, -1.0, 1.0), samples)]
        out.append(_Comparison(f"{ref}'s lead over {m}, {easy} to {hard}", contrast(terms)))
    return f"{ref}'s lead over {', '.join(check.models)} grows from {easy} to {hard}", out


def _judge(check: Check, look: _Lookup, alpha: float = ALPHA) -> Tuple[str, str]:
    """(outcome among reproduced | not reproduced | unresolved, the reason with the deciding comparisons)."""
    what, comps = _comparisons(check, look)
    _holm(comps)
    states = [c.state(alpha) for c in comps]
    failing = [c.text() for c, s in zip(comps, states) if s == "fails"]
    open_ = [c.text() for c, s in zip(comps, states) if s == "unresolved"]
    many = len(comps) > 1
    if failing:
        return "not reproduced", (f"{what}: against the claim beyond seed noise"
                                  + (f" ({len(failing)} of {len(comps)})" if many else "") + f": {'; '.join(failing)}"
                                  + (f"; not resolved by the seeds: {'; '.join(open_)}" if open_ else "")
                                  + f" ({TEST_NAME}, α = {alpha:g}{', Holm over the comparisons' if many else ''})")
    if open_:
        return "unresolved", (f"{what}: not resolved by the seeds"
                              + (f" ({len(open_)} of {len(comps)})" if many else "") + f": {'; '.join(open_)}"
                              + f" ({TEST_NAME}, α = {alpha:g}{', Holm over the comparisons against' if many else ''}; "
                                f"a positive gap leans the claim's way)")
    worst = max(c.test.p for c in comps)
    return "reproduced", (f"{what}: beyond seed noise ({TEST_NAME}, {'largest ' if many else ''}p = {worst:.2g} "
                          f"< α = {alpha:g})")


def claim_scale(claim: Claim, protocol: Protocol, budget) -> Optional[Tuple[int, int, str]]:
    """(our training scale, the source's, unit) on the claim's first role; None when the source gives
    no scale or the role is unknown."""
    from nlsearch.tasks import load_task

    src = claim.source_setting
    unit = "sequences" if src.train_sequences else "tokens" if src.train_tokens else None
    roles = claim.check.read_roles()
    if unit is None or budget is None or not roles:
        return None
    rule = protocol.by_role().get(roles[0])
    if rule is None:
        return None
    task = load_task(rule.task, protocol.resolve_tasks_dir())
    ours = budget_scale(budget, task, unit)
    return ours, int(src.train_sequences or src.train_tokens), unit


def scale_text(scale: Tuple[int, int, str]) -> str:
    ours, theirs, unit = scale
    return f"ours {ours:,} training {unit}, the source's {theirs:,} (1/{theirs / ours:,.0f})"


def too_small(claim: Claim, scale: Optional[Tuple[int, int, str]], budget_name: str) -> Optional[str]:
    """The reason the claim is not testable at this scale, or None: far below the source's scale and
    the repository's calibration says the effect cannot appear at this budget."""
    if scale is None or scale[0] >= MIN_SCALE_RATIO * scale[1] or budget_name not in claim.calibration:
        return None
    return (f"training scale far below the source's: {scale_text(scale)} < 1/{1 / MIN_SCALE_RATIO:.0f}; "
            f"calibration at {budget_name}: {claim.calibration[budget_name]}")


def testable_at(claim: Claim, protocol: Protocol, budget) -> bool:
    """Whether the claim can get a verdict on this track (its tasks are worth training there)."""
    return budget.name in claim.budgets and too_small(claim, claim_scale(claim, protocol, budget), budget.name) is None


def reads_complete(claim: Claim, protocol: Protocol, tasks: Mapping[str, Any]) -> bool:
    """Whether ``tasks`` (by task ref) hold every task ``claim`` reads."""
    roles = protocol.by_role()
    return all(r in roles and roles[r].task in tasks for r in claim.check.read_roles())


def judge(claim: Claim, entries: List[Entry], protocol: Protocol, budget_name: str,
          pending: Sequence[str] = (), budget=None,
          extra: Optional[Mapping[str, Mapping[str, TaskResult]]] = None,
          measured: Optional[Mapping[str, Mapping[str, TaskResult]]] = None,
          seeded: Optional[Mapping[str, Mapping[str, Tuple[int, int, Optional[TaskResult]]]]] = None) -> Verdict:
    """The verdict on ``claim`` from ``entries`` (one protocol version and track) and ``extra`` (claim
    task results by baseline name and task ref). ``pending``: baselines a reproduction has still to
    score; a claim that reads one of them is ``pending``, naming them, unless ``measured`` (by baseline
    name and task ref: the tasks of a pending baseline whose every run the reproduction has finished)
    holds every task the claim reads of it. ``budget``: the track's Budget, for the training-scale rule
    (None: no scale comparison). A claim that reads more seeds than the protocol's (``claim.seeds``) is
    judged from ``seeded`` alone when given: by baseline name and task ref, (runs done, runs needed,
    the result over the seeds done) at :func:`claim_seeds`; it is ``pending`` while a model misses a
    run there, or is not there at all. Without ``seeded`` (those seeds are not trained on this track)
    it reads the entries at the protocol's seeds, and says so when that decides it."""
    measured = measured or {}
    scale = claim_scale(claim, protocol, budget)
    small = too_small(claim, scale, budget_name)
    more = seeded is not None and budget_name in claim.budgets and small is None
    seeded = seeded or {}

    def complete(model: str) -> bool:
        if more:
            done = {t: c for t, c in seeded.get(model, {}).items() if c[0] == c[1] and c[2] is not None}
            return reads_complete(claim, protocol, done)
        return protocol is not None and reads_complete(claim, protocol, measured.get(model, {}))

    if more:             # its own seeds: every model waits for its runs there, entry or not
        waiting = [m for m in claim.models() if not complete(m)]
    else:
        waiting = [m for m in claim.models() if m in pending and not complete(m)]
    if waiting and (small or budget_name not in claim.budgets):     # decided by the track alone: no need to wait
        why = small or f"not at budget {budget_name!r} (testable at {list(claim.budgets)})"
        return Verdict(claim, "not testable", f"{why}; the numbers are still to come (runs missing for "
                                              f"{', '.join(waiting)})", {}, scale)
    if waiting and more:
        missing = [f"{m} has {c[0]} of {c[1]} runs on {t}" for m in waiting for t, c in seeded.get(m, {}).items()
                   if c[0] < c[1]] + [f"{m} is not measured here" for m in waiting if m not in seeded]
        return Verdict(claim, "pending", f"runs missing at the claim's {len(claim_seeds(claim, protocol))} "
                                         f"seeds: {'; '.join(missing)}")
    if waiting:
        return Verdict(claim, "pending", f"runs missing for {', '.join(waiting)}")
    if more:
        look = _Lookup([], protocol, claim.check.length, None, claim.check.metric,
                       {m: {t: c[2] for t, c in seeded[m].items()} for m in claim.models() if m in seeded})
    else:
        look = _Lookup(entries, protocol, claim.check.length, extra, claim.check.metric,
                       {m: measured[m] for m in claim.models() if m in pending and complete(m)})
    try:
        outcome, what = _judge(claim.check, look)
    except _Untestable as why:
        return Verdict(claim, "not testable", small or str(why), look.numbers, scale)
    if budget_name not in claim.budgets or small:
        why = small or f"not at budget {budget_name!r} (testable at {list(claim.budgets)})"
        return Verdict(claim, "not testable", f"{why}; the numbers would read: {outcome} ({what})",
                       look.numbers, scale)
    if scale is not None and scale[0] < MIN_SCALE_RATIO * scale[1]:
        what += f" (at {scale_text(scale)})"
    if more:
        what += (f" (over {len(claim_seeds(claim, protocol))} seeds, the claim's own: "
                 f"{len(extra_seeds(claim, protocol))} beyond the protocol's, at each model's chosen lr)")
    elif protocol is not None and extra_seeds(claim, protocol):
        what += (f" (at the protocol's {len(protocol.seeds)} seeds: the claim's own {claim.seeds} were not "
                 f"measured here)")
    if outcome != "reproduced":
        effect = claim.calibration.get(budget_name)
        what += (f"; a budget effect we can name: {effect}" if effect else
                 "; no budget effect we can name (the claim records no calibration finding for this track)")
    return Verdict(claim, outcome, what, look.numbers, scale)
