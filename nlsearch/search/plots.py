"""The figures of a search (matplotlib ``Figure`` objects: no pyplot, no backend switched, no global
style touched, so importing this in a notebook changes nothing): each returns the sentence summary.md
puts under it."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Dict, Optional

import pandas as pd
from matplotlib.figure import Figure

from nlsearch.display import save_figure
from nlsearch.search.space import SearchSpace, objective_columns
from nlsearch.search.study import DUPLICATE_OF


def _figure(figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _complete(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.state == "COMPLETE"]


def depth_plot(space: SearchSpace, frame: pd.DataFrame, out: Path) -> str:
    """Each trained trial's value against its nesting depth (a duplicate, which took an earlier
    trial's result, is that trial again: left out)."""
    col, obj = objective_columns(space)[0], space.objectives[0]
    done = _complete(frame).dropna(subset=[col, "nesting_depth"])
    if "duplicate_of" in done:
        done = done[done.duplicate_of.isna()]
    fig, ax = _figure((5.5, 3.8))
    ax.scatter(done.nesting_depth, done[col], alpha=0.5, label="trials")
    stats = done.groupby("nesting_depth")[col].agg(["mean", "std", "count"]).reset_index()
    ax.errorbar(stats.nesting_depth, stats["mean"], yerr=stats["std"].fillna(0), color="C3", marker="o",
                capsize=4, label="mean ± std")
    ax.set(xlabel="nesting depth (levels)", ylabel=obj.metric, title=f"{space.name}: {obj.metric} vs nesting depth")
    ax.legend()
    save_figure(fig, out / "depth.png")
    if stats.empty:
        return "No trial completed, so no depth can be compared yet."
    best = stats.loc[stats["mean"].idxmax() if obj.direction == "maximize" else stats["mean"].idxmin()]
    n = int(best["count"])
    return (f"{obj.metric} against nesting depth over {len(done)} trained trials (duplicates left out); the best "
            f"mean is at depth {int(best.nesting_depth)} ({best['mean']:.4g} over {n} trial{'s' * (n != 1)}).")


def history_plot(space: SearchSpace, frame: pd.DataFrame, out: Path) -> str:
    col, obj = objective_columns(space)[0], space.objectives[0]
    fig, ax = _figure((5.5, 3.8))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        part = frame[(frame.state == state)]
        if state == "PRUNED":
            part = part.assign(**{col: part["last_report"]})   # the value it was pruned at
        ax.scatter(part.number, part[col], marker=marker, label=state.lower(), alpha=0.7)
    done = _complete(frame).sort_values("number")
    best = done[col].cummax() if obj.direction == "maximize" else done[col].cummin()
    ax.step(done.number, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=obj.metric, title=f"{space.name}: optimisation history")
    ax.legend()
    save_figure(fig, out / "history.png")
    if done.empty:
        return "No trial completed yet."
    first_best = int(done.number[best == best.iloc[-1]].iloc[0])
    return (f"{obj.metric} of each complete trial and the best so far; the best ({best.iloc[-1]:.4g}) was "
            f"first reached at trial {first_best} of {int(frame.number.max()) + 1}.")


def pareto_plot(study, space: SearchSpace, frame: pd.DataFrame, out: Path) -> str:
    cols = objective_columns(space)[:2]
    done = _complete(frame)
    front = frame[frame.number.isin([t.number for t in study.best_trials])]
    fig, ax = _figure((5.5, 3.8))
    ax.scatter(done[cols[0]], done[cols[1]], alpha=0.4, label="trials")
    front = front.sort_values(cols[0])
    ax.plot(front[cols[0]], front[cols[1]], "o-", color="C3", label="Pareto front")
    ax.set(xlabel=space.objectives[0].metric, ylabel=space.objectives[1].metric, title=f"{space.name}: Pareto front")
    ax.legend()
    save_figure(fig, out / "pareto.png")
    return (f"{len(front)} of {len(done)} complete trials are Pareto-optimal in "
            f"({space.objectives[0].metric}, {space.objectives[1].metric}).")


def importance_plot(study, space: SearchSpace, out: Path) -> str:
    import optuna

    trained = distinct_trials(study)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = (lambda t: t.values[0]) if space.multi_objective else None
            imp = optuna.importance.get_param_importances(           # Optuna's default: PED-ANOVA
                trained, target=target, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        imp, reason = {}, str(err)
    else:
        reason = "fewer than two complete trials with varied parameters"
    fig, ax = _figure((5.5, 0.4 * max(len(imp), 2) + 1.2))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set(xlabel="importance (PED-ANOVA)", title=f"{space.name}: parameter importance")
    save_figure(fig, out / "importance.png")
    if not imp or any(math.isnan(v) for v in imp.values()):
        return f"Parameter importance could not be computed: {reason}."
    top = next(iter(imp))
    return (f"PED-ANOVA importance of each parameter for {space.objectives[0].metric} over "
            f"{len(trained.trials)} trained trials (duplicates left out); {top!r} explains the most ({imp[top]:.0%}).")


def distinct_trials(study):
    """An in-memory copy of ``study`` holding its complete trials less the duplicates (a duplicate took
    an earlier trial's values without training: counted, it would weigh that configuration twice in
    the importance's estimate)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if DUPLICATE_OF not in t.user_attrs]
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(done)
    return copy


def confirm_plot(space: SearchSpace, confirmation: pd.DataFrame, out: Path) -> str:
    """The confirmation runs: every seed's value per finalist, grouped by the question's value, with
    each finalist's mean ± std."""
    obj = space.objectives[0]
    used = confirmation[confirmation.chosen & (confirmation.status == "complete")]
    fig, ax = _figure((6.0, 3.8))
    labels = []
    for i, ((value, trial), part) in enumerate(used.groupby(["question", "trial"], sort=True)):
        labels.append(f"{value}\n#{trial}" if space.question else f"#{trial}")
        ax.scatter([i] * len(part), part["value"], color="C0", alpha=0.6, label="seeds" if i == 0 else None)
        std = part["value"].std() if len(part) > 1 else 0.0
        ax.errorbar([i], [part["value"].mean()], yerr=[0.0 if math.isnan(std) else std], color="C3", marker="o",
                    capsize=4, label="mean ± std" if i == 0 else None)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=f"{space.question or 'finalist'} (trial)", ylabel=obj.metric,
           title=f"{space.name}: confirmation on the report eval set")
    if labels:
        ax.legend()
    save_figure(fig, out / "confirm.png")
    return (f"{obj.metric} of every confirmation run (one point per seed) per finalist"
            + (f", grouped by {space.question}" if space.question else "") + ", with the mean ± std over seeds.")


def make_plots(study, space: SearchSpace, frame: pd.DataFrame, out: Path,
               confirmation: Optional[pd.DataFrame] = None) -> Dict[str, str]:
    """Writes every figure; returns {file name: sentence}."""
    out = Path(out)
    sentences = {}
    if confirmation is not None and not confirmation.empty:
        sentences["confirm.png"] = confirm_plot(space, confirmation, out)
    sentences.update({"depth.png": depth_plot(space, frame, out), "history.png": history_plot(space, frame, out)})
    if space.multi_objective:
        sentences["pareto.png"] = pareto_plot(study, space, frame, out)
    sentences["importance.png"] = importance_plot(study, space, out)
    return sentences
