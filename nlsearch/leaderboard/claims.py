"""Published claims a small-scale reproduction can test, and their verdicts from leaderboard entries.

A claims file (``leaderboard/claims.yaml``, named by the protocol) lists claims with their source and
a check over the protocol's task roles (``recall``, ``recall_hard``, ``overwrite``, ``lm``, ``needle``,
``continual``) and entry names (the baselines are named after their presets):

- ``at_least``: ``model``'s mean on ``role`` is at least ``value`` (at most, for a lower-is-better metric);
- ``beats``: on every role in ``roles``, every model in ``winners`` is better than every one in ``losers``
  (at the longest eval length when ``length: longest``);
- ``order``: on ``role``, ``models`` are ordered best first (ties allowed);
- ``gap_grows``: the lead of ``reference`` over each of ``models`` is larger on ``roles[1]`` than on
  ``roles[0]`` (recurrent models fall behind as the task gets harder).

Verdicts: ``reproduced``, ``not reproduced``, or ``not testable`` when the budget track is not one the
claim lists (a claim about trained models says nothing at a budget of a few steps), a role is not in
the protocol, or a model has no finite number. The means are compared as they are; the report prints
the seed spread next to them so a reader can judge the margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

from pydantic import Field, TypeAdapter

from nlsearch.config import ConfigError, Strict, read_yaml_mapping
from nlsearch.leaderboard.entry import Entry
from nlsearch.leaderboard.protocol import ROLES, Protocol

Role = Literal[ROLES]


class Check(Strict):
    kind: Literal["at_least", "beats", "order", "gap_grows"]
    model: Optional[str] = None
    value: Optional[float] = None
    roles: Tuple[Role, ...] = ()
    role: Optional[Role] = None
    winners: Tuple[str, ...] = ()
    losers: Tuple[str, ...] = ()
    models: Tuple[str, ...] = ()
    reference: Optional[str] = None
    length: Literal["headline", "longest"] = "headline"


class Claim(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    claim: str
    source: str
    budgets: Tuple[str, ...] = Field(min_length=1)      # budget names at which the claim is testable
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
    outcome: str                                         # reproduced | not reproduced | not testable | pending
    reason: str
    numbers: Dict[str, Tuple[float, float, int]] = field(default_factory=dict)   # label -> mean, std, n


def load_claims(path: Path) -> ClaimsFile:
    data = read_yaml_mapping(path)
    try:
        return TypeAdapter(ClaimsFile).validate_python(data)
    except Exception as err:                             # noqa: BLE001 - reported with the file name
        raise ConfigError(f"{path}: invalid claims file: {err}") from None


class _Untestable(Exception):
    pass


class _Lookup:
    """Means by (model, role) from the baseline entries of one track (``nlsearch reproduce`` measured
    every seed of them; a submission, whose numbers may be partly claimed, never stands in for a
    baseline whatever its name), in 'higher is better' orientation."""

    def __init__(self, entries: List[Entry], protocol: Protocol, length: str):
        self.by_name = {e.name: e for e in entries if e.kind == "baseline" and e.verification is None}
        self.roles = protocol.by_role()
        self.length = length
        self.numbers: Dict[str, Tuple[float, float, int]] = {}

    def get(self, model: str, role: str) -> Tuple[float, bool]:
        if role not in self.roles:
            raise _Untestable(f"the protocol has no {role!r} task")
        entry = self.by_name.get(model)
        if entry is None:
            raise _Untestable(f"no baseline entry named {model!r} on this track")
        result = entry.tasks[self.roles[role].task]
        metric = result.metric
        if self.length == "longest":
            lengths = sorted(result.per_length())
            metric = f"{metric}@{lengths[-1]}" if lengths else metric
        mean, std, n = result.aggregate(metric)
        self.numbers[f"{model} {result.task} {metric}"] = (mean, std, n)
        if math.isnan(mean):
            raise _Untestable(f"{model} has no finite {metric} on {result.task}")
        return (mean if result.higher_is_better else -mean), result.higher_is_better


def _judge(check: Check, look: _Lookup) -> Tuple[bool, str]:
    if check.kind == "at_least":
        value, hib = look.get(check.model, check.role)
        bound = check.value if hib else -check.value
        return value >= bound, f"{check.model} {'≥' if hib else '≤'} {check.value}"
    if check.kind == "beats":
        pairs = [(w, lo, r) for r in check.roles for w in check.winners for lo in check.losers]
        ok = all(look.get(w, r)[0] > look.get(lo, r)[0] for w, lo, r in pairs)
        return ok, f"{', '.join(check.winners)} better than {', '.join(check.losers)} on {', '.join(check.roles)}"
    if check.kind == "order":
        values = [look.get(m, check.role)[0] for m in check.models]
        ok = all(a >= b for a, b in zip(values, values[1:]))
        return ok, f"best first: {' ≥ '.join(check.models)} on {check.role}"
    easy, hard = check.roles[0], check.roles[1]
    gaps = [(look.get(check.reference, easy)[0] - look.get(m, easy)[0],
             look.get(check.reference, hard)[0] - look.get(m, hard)[0]) for m in check.models]
    ok = all(h > e for e, h in gaps)
    return ok, f"{check.reference}'s lead over {', '.join(check.models)} grows from {easy} to {hard}"


def judge(claim: Claim, entries: List[Entry], protocol: Protocol, budget_name: str,
          pending: Sequence[str] = ()) -> Verdict:
    """The verdict on ``claim`` from ``entries`` (one protocol version and track). ``pending``: baselines
    a reproduction has still to score; a claim that reads one of them is ``pending``, naming them."""
    waiting = [m for m in claim.models() if m in pending]
    if waiting:
        return Verdict(claim, "pending", f"runs missing for {', '.join(waiting)}")
    look = _Lookup(entries, protocol, claim.check.length)
    try:
        ok, what = _judge(claim.check, look)
    except _Untestable as why:
        return Verdict(claim, "not testable", str(why), look.numbers)
    if budget_name not in claim.budgets:
        return Verdict(claim, "not testable", f"not at budget {budget_name!r} (testable at {list(claim.budgets)}); "
                                              f"the numbers would read '{what}': {'holds' if ok else 'fails'}",
                       look.numbers)
    return Verdict(claim, "reproduced" if ok else "not reproduced", what, look.numbers)
