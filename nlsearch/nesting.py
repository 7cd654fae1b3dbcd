"""The nesting profile: every level of a model, fastest first (README.md, "Models").

A level is one optimisation problem with its own context flow and update clock: in-context memories
update every ``period`` tokens; parameters and optimizer states every ``period`` outer steps. The
number of levels is the "nesting depth" that search spaces use."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Literal, Optional

CLOCK_RANK = {"tokens": 0, "steps": 1}


@dataclass(frozen=True)
class Level:
    name: str                          # e.g. "attention", "memory (deltanet)", "weights"
    what: str                          # what the level stores or learns
    clock: Literal["tokens", "steps"]  # in-context (tokens) or outer training (steps)
    period: Optional[int]              # tokens or steps between updates; None: never written
    objective: str                     # the level's objective: "dot", "l2", "LM loss", ...
    memory: str                        # "linear", "mlp", "kv-cache", "parameters", "moments", ...
    stage: int = 0                     # tie-break at equal clock and period (weights before moments)

    def frequency(self) -> str:
        if self.period is None:
            return "never (fixed)"
        unit = "token" if self.clock == "tokens" else "outer step"
        return f"every {unit}" if self.period == 1 else f"every {self.period} {unit}s"

    def as_row(self) -> Dict[str, object]:
        row = asdict(self)
        row["frequency"] = self.frequency()
        return row


def order_levels(levels: Iterable[Level]) -> List[Level]:
    """Fastest first: in-context before outer, shorter period first, then by stage."""
    indexed = list(enumerate(levels))
    big = 1 << 60
    indexed.sort(key=lambda il: (CLOCK_RANK[il[1].clock], il[1].period or big, il[1].stage, il[0]))
    return [lv for _, lv in indexed]


def dedupe(levels: Iterable[Level]) -> List[Level]:
    """One entry per distinct level: N identical layers form one level of the nesting, not N."""
    seen, out = set(), []
    for lv in levels:
        if lv not in seen:
            seen.add(lv)
            out.append(lv)
    return out
