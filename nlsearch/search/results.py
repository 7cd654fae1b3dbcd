"""What a search leaves in ``results/<study>/``, all derived from the Optuna study:

- ``trials.parquet``: one row per trial (``p:<param>`` sampled values, canonical config and hash,
  state, the objective values, every metric ``m:<task>:<metric>`` (a mean over seeds of its finite
  values; ``dropped`` lists the seeds' values that were not finite), parameter count, state size,
  nesting depth, FLOPs/token, tokens/s, durations, hardware, reason);
- ``best.yaml``: the best trial's model config, as ``nlsearch train --model`` and the leaderboard
  take it (multi-objective: the Pareto trial best on the first objective);
- ``pareto.parquet`` (multi-objective): the Pareto-optimal trials;
- plots: ``depth.png`` (first objective vs nesting depth, mean ± std over trials), ``history.png``
  (optimisation history), ``pareto.png`` (multi-objective), ``importance.png`` (PED-ANOVA, Optuna's default);
- ``summary.md``: the best trials and a sentence per plot.

Every file is written atomically; ``write_results`` may run after every trial.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from nlsearch.config import parse_config, to_yaml
from nlsearch.display import markdown_table
from nlsearch.io import write_parquet, write_text
from nlsearch.models.backbone import ModelConfig
from nlsearch.search.sampling import candidate_text
from nlsearch.search.space import SearchSpace, objective_columns
from nlsearch.search.study import DUPLICATE_OF

FACTS = ("params", "state_size", "nesting_depth", "flops_per_token")


def trials_frame(study, space: SearchSpace) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {"number": t.number, "state": t.state.name, "reason": attrs.get("reason", ""),
               "candidate": candidate_text(space, t.params)}
        for i, col in enumerate(objective_columns(space)):
            row[col] = t.values[i] if t.values is not None else math.nan
        row.update({f"p:{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in t.params.items()})
        row.update({f"m:{k}": v for k, v in (attrs.get("metrics") or {}).items()})
        row.update({k: attrs.get(k, math.nan) for k in FACTS})
        row.update(tokens_per_s=attrs.get("tokens_per_s") or math.nan, wall_s=attrs.get("wall_s", math.nan),
                   duration_s=(t.duration.total_seconds() if t.duration else math.nan),
                   started=str(t.datetime_start or ""), hardware=attrs.get("hardware", ""),
                   pruned_at=attrs.get("pruned_at"), retry_of=attrs.get("retry_of"),
                   duplicate_of=attrs.get(DUPLICATE_OF),
                   dropped="; ".join(attrs.get("dropped") or []),
                   last_report=(t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values
                                else math.nan),
                   constraints=json.dumps(t.constraints), config=attrs.get("config", ""),
                   config_sha256=attrs.get("config_sha256", ""), run_dir=attrs.get("run_dir", ""))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("pruned_at", "retry_of", "duplicate_of"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    for col in frame.columns:
        if col.startswith("p:") and frame[col].map(type).nunique() > 1:
            frame[col] = frame[col].astype(str)
    return frame


def best_trials(study, space: SearchSpace):
    """Complete trials ranked best first (multi-objective: the Pareto front, by the first objective),
    each config once (the first trial that trained it: a duplicate carries no new evidence)."""
    sign = -1.0 if space.objectives[0].direction == "maximize" else 1.0
    pool = study.best_trials if space.multi_objective else \
        [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    seen, out = set(), []
    for t in sorted(pool, key=lambda t: (t.user_attrs.get(DUPLICATE_OF) is not None, sign * t.values[0], t.number)):
        sha = t.user_attrs.get("config_sha256") or f"trial {t.number}"
        if sha not in seen:
            seen.add(sha)
            out.append(t)
    return sorted(out, key=lambda t: sign * t.values[0])


def write_best(study, space: SearchSpace, out: Path) -> Optional[Path]:
    ranked = best_trials(study, space)
    if not ranked:
        return None
    best = ranked[0]
    cfg = parse_config(ModelConfig, json.loads(best.user_attrs["config"]), f"trial {best.number}")
    cfg = cfg.model_copy(update={"name": f"{space.name}-best"})
    values = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(space.objectives, best.values))
    header = (f"# best of search {space.name!r}: trial {best.number} ({values})\n"
              f"# config sha256 {best.user_attrs['config_sha256']}\n")
    return write_text(header + to_yaml(cfg), out / "best.yaml")


def write_results(study, space: SearchSpace, out: Path, plots: bool = False) -> pd.DataFrame:
    """Writes the tables (and, when ``plots``, the figures and summary.md); returns the trials table."""
    out = Path(out)
    frame = trials_frame(study, space)
    if frame.empty:
        return frame
    from filelock import FileLock

    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / ".results.lock"):         # several drivers of one study may finish trials at once
        _write(study, space, out, frame, plots)
    return frame


def _write(study, space: SearchSpace, out: Path, frame: pd.DataFrame, plots: bool) -> None:
    write_parquet(frame, out / "trials.parquet")
    write_best(study, space, out)
    if space.multi_objective:
        numbers = [t.number for t in best_trials(study, space)]
        write_parquet(frame[frame.number.isin(numbers)], out / "pareto.parquet")
    if plots:
        from nlsearch.search.confirm import load_confirmation
        from nlsearch.search.plots import make_plots
        confirmation = load_confirmation(out)
        sentences = make_plots(study, space, frame, out, confirmation)
        write_text(summary_markdown(study, space, frame, sentences, confirmation), out / "summary.md")


def top_table(study, space: SearchSpace, frame: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    numbers = [t.number for t in best_trials(study, space)][:k]
    cols = ["number"] + objective_columns(space) + ["nesting_depth", "params", "state_size", "candidate"]
    table = frame.set_index("number").loc[numbers].reset_index()[cols]
    for col in ("nesting_depth", "params", "state_size"):
        table[col] = table[col].astype(int)
    return table.rename(columns=lambda c: c.removeprefix("objective:"))


def counts(frame: pd.DataFrame) -> Dict[str, int]:
    out = {s.lower(): int((frame.state == s).sum()) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    out["duplicate"] = int(frame.duplicate_of.notna().sum()) if "duplicate_of" in frame else 0
    return out


def lr_sentence(space: SearchSpace) -> str:
    """How the learning rate was kept from deciding the answer."""
    searched = [name for name, p in space.params.items() if getattr(p, "path", None) == "optimizer.lr"]
    factors = space.confirm.lr_factors
    if searched and len(factors) > 1:
        return (f"Learning rate: searched per candidate (`{searched[0]}`), then re-tuned per finalist in the "
                f"confirmation (x{factors} on seed {space.confirm.seeds[0]}, the best kept for every seed).")
    if searched:
        return (f"Learning rate: searched per candidate (`{searched[0]}`); each finalist is confirmed at its own "
                f"sampled rate, not re-tuned.")
    if len(factors) > 1:
        return (f"Learning rate: the same for every candidate in the search, re-tuned per finalist in the "
                f"confirmation (x{factors}).")
    return "Learning rate: the same for every candidate (not searched, not re-tuned)."


def answer_lines(space: SearchSpace, confirmation: Optional[pd.DataFrame]) -> List[str]:
    """The verdict paragraph and the confirmation table, or a line saying there is none yet."""
    from nlsearch.search.confirm import confirmation_table, verdict

    if confirmation is None or confirmation.empty:
        return ["No confirmation stage has run (`--no-confirm`, or the search has not finished): the ranking "
                "below is of single runs on the selection set, which seed noise can reorder.", ""]
    result = verdict(space, confirmation)
    seeds = sorted(confirmation.seed.unique().tolist())
    lines = [result.text, "", lr_sentence(space), "",
             f"### Confirmation: seeds {seeds} on the report eval set", ""]
    if not result.per_value.empty:
        lines += [markdown_table(confirmation_table(result)), ""]
    return lines


def summary_markdown(study, space: SearchSpace, frame: pd.DataFrame, sentences: Dict[str, str],
                     confirmation: Optional[pd.DataFrame] = None) -> str:
    c = counts(frame)
    lines = [f"# Search `{space.name}`", "", "## Answer", ""] + answer_lines(space, confirmation) + [
             space.description.strip(), "",
             f"Tasks {', '.join(space.tasks)}; budget {space.budget if isinstance(space.budget, str) else 'inline'}; "
             f"seeds {space.seeds}; sampler {space.sampler.kind}; pruner {space.pruner.kind}.",
             f"Trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed"
             + (f"; {c['duplicate']} of the complete ones proposed a config an earlier trial had trained, and "
                f"took its result without training" if c["duplicate"] else "") + ".", "",
             "## Best trials of the search (one run each, selection eval set)", ""]
    if c["complete"]:
        lines.append(markdown_table(top_table(study, space, frame)))
    else:
        lines.append("No trial completed.")
    lines += ["", "## Plots", ""]
    for name, sentence in sentences.items():
        lines += [f"![{name}]({name})", "", sentence, ""]
    return "\n".join(lines)
