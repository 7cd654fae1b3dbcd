"""``run_suite(presets, tasks, budget, seeds, out_dir)``: train every (preset, task, seed) under one
budget and write ONE comparison table.

Layout of ``out_dir``:

- ``runs/<task>@<v>/<model>-<sha12>/<budget>@<v>-seed<seed>/``: each run's directory (see
  ``nlsearch.train.record``). A run whose ``record.json`` already exists is reused, not retrained; a
  run killed mid-way resumes from its last checkpoint. Re-running a suite is therefore cheap.
- ``suite.parquet``: one row per run (columns ``SUITE_COLUMNS``, then for every headline metric ``m``
  of the suite's tasks a column ``m`` and a column ``m.higher_is_better``; NaN where a task lacks it).
  ``headline`` / ``value`` / ``higher_is_better`` repeat the task's FIRST spec metric, the one pivoted.
- ``suite.md``: the pivot presets × tasks of the headline metric, mean over the seeds that completed.

Both files are written atomically after every run and at the end, so a killed suite leaves a
consistent partial table. A run that raises (``NonFiniteLossError`` or any other exception from
training) becomes a row with status ``failed: <reason>`` and the suite goes on. Every name (preset,
task, budget, seed) is validated, and every run planned, before anything is written.

Baseline: for every ``lm``-kind task the table also holds a ``bigram`` row per seed: the bits per
byte of an add-one-smoothed bigram model (``p(b | a) = (c(a, b) + 1) / (c(a) + V)``) counted on the
exact train batches a model sees under the budget with that seed (scored positions only), and scored
on the same eval batches as the models (``budget.eval_seed``, each eval length, headline = mean over
lengths); its row has ``params`` = V² (the count table) and ``state_size`` = 1 (the previous byte).
A preset's bits per byte should be below it; the pure functions are ``fit_bigram`` and
``bigram_bits_per_byte``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd

from nlsearch.budgets import Budget, load_budget
from nlsearch.eval.bigram import bigram_score
from nlsearch.display import markdown_table
from nlsearch.io import check_writable_folder, write_parquet, write_text
from nlsearch.models import list_presets
from nlsearch.train.loop import NonFiniteLossError, train
from nlsearch.train.plan import RECORD, RunPlan, check_seed, default_run_dir, plan_run
from nlsearch.train.record import RunRecord, finished_record

# The settings the cpu budget can learn and the floors name (MQAR at T=128 with 8 pairs and its
# overwrite variant); ``recall``/``recall_overwrite`` (8,192-token vocabulary) are for the gpu budget.
DEFAULT_TASKS: Tuple[str, ...] = ("recall_small", "recall_small_overwrite", "lm", "longctx_needle",
                                  "continual_recall")
DEFAULT_BUDGET = "cpu"
BIGRAM = "bigram"
SUITE_COLUMNS: Tuple[str, ...] = (
    "preset", "task", "task_kind", "seed", "budget", "status", "reused", "headline", "value", "higher_is_better",
    "params", "state_size", "tokens_per_s", "wall_time_s", "config_sha256", "run_dir")

Log = Callable[[str], Any]
ModelSpec = Union[str, Path, Dict[str, Any]]


# --- the bigram baseline (pure) -----------------------------------------------------------------

def bigram_rows(plan: RunPlan) -> Dict[str, Any]:
    """The bigram baseline of an ``lm`` plan: fitted on the train batches of ``plan.seed`` (exactly
    those ``train`` draws), scored on the eval batches ``evaluate`` draws; headline = mean over the
    eval lengths, like the models'."""
    start = time.perf_counter()
    task = plan.task
    value = bigram_score(task, plan.kb, plan.seed, plan.train_lengths, plan.eval_lengths, plan.budget.eval_seed)
    row = _base_row(BIGRAM, plan, None)
    row.update(status="completed", headline="bits_per_byte", value=value, higher_is_better=False,
               params=task.vocab_size ** 2, state_size=1, wall_time_s=time.perf_counter() - start)
    row["metrics"] = {"bits_per_byte": (value, False)}
    return row


# --- the suite -----------------------------------------------------------------------------------

def _label(spec: ModelSpec, plan: RunPlan) -> str:
    if isinstance(spec, (str, Path)) and str(spec) in list_presets():
        return str(spec)
    if plan.cfg.name:
        return plan.cfg.name
    return Path(str(spec)).stem if isinstance(spec, (str, Path)) else "model"


def _base_row(preset: str, plan: RunPlan, run_dir: Optional[Path]) -> Dict[str, Any]:
    first = plan.task.spec.metrics[0]
    return {"preset": preset, "task": plan.task.ref, "task_kind": plan.kind, "seed": plan.seed,
            "budget": plan.budget.ref, "status": "pending", "reused": False, "headline": first.name,
            "value": math.nan, "higher_is_better": first.higher_is_better, "params": None, "state_size": None,
            "tokens_per_s": None, "wall_time_s": None, "config_sha256": None,
            "run_dir": str(run_dir) if run_dir is not None else None, "metrics": {}}


def _record_row(row: Dict[str, Any], record: RunRecord, reused: bool) -> Dict[str, Any]:
    metrics = {name: (math.nan if record.metrics.get(name) is None else float(record.metrics[name]),
                      bool(record.higher_is_better[name])) for name in record.headline}
    value = metrics.get(row["headline"], (math.nan, row["higher_is_better"]))[0]
    row.update(status=record.status, reused=reused, value=value, budget=record.budget, params=record.params,
               state_size=record.state_size, tokens_per_s=record.tokens_per_s, wall_time_s=record.wall_time_s,
               config_sha256=record.config_sha256, metrics=metrics)
    return row


def _equivalent_run(run_dir: Path, plan: RunPlan) -> Optional[Tuple[Path, RunRecord]]:
    """The finished run to reuse for ``plan`` and its record: its own folder's (which must be this
    plan's run: ValueError otherwise), else a sibling's of the same config, task and seed under another
    version of the same budget that trains this task kind identically (:meth:`Budget.trains_like`), so
    a new budget version that changed one kind does not retrain the others."""
    identity = plan.identity()
    own = finished_record(run_dir, identity)
    if own is not None:
        return run_dir, own
    for sibling in sorted(run_dir.parent.glob(f"{plan.budget.name}@*-seed{plan.seed}"), reverse=True):
        if not (sibling / RECORD).is_file():
            continue
        try:
            record = finished_record(sibling, identity, ignore=("budget", "budget_sha256"))
            other = load_budget(record.budget)
        except ValueError:                               # another run, a budget file's run, an unknown version
            continue
        if other.sha256() == record.budget_sha256 and other.trains_like(plan.budget, plan.kind):
            return sibling, record
    return None


def _failure(err: BaseException) -> str:
    reason = str(err) if isinstance(err, NonFiniteLossError) else f"{type(err).__name__}: {err}"
    return "failed: " + " ".join(reason.split())[:300]


def suite_frame(rows: Sequence[Dict[str, Any]]) -> pd.DataFrame:
    """The table of ``rows``: the fixed columns, then ``m`` and ``m.higher_is_better`` per headline metric."""
    names: List[str] = []
    for row in rows:
        names += [n for n in row["metrics"] if n not in names]
    records = []
    for row in rows:
        flat = {c: row[c] for c in SUITE_COLUMNS}
        for name in names:
            value, up = row["metrics"].get(name, (math.nan, None))
            flat[name], flat[f"{name}.higher_is_better"] = value, up
        records.append(flat)
    metric_cols = [c for n in names for c in (n, f"{n}.higher_is_better")]
    frame = pd.DataFrame(records, columns=list(SUITE_COLUMNS) + metric_cols)
    for col in ("params", "state_size"):
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    for col in ("value", "tokens_per_s", "wall_time_s", *names):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in ("higher_is_better", *[f"{n}.higher_is_better" for n in names]):
        frame[col] = pd.array(frame[col].tolist(), dtype="boolean")
    frame["seed"] = frame["seed"].astype("int64")
    frame["reused"] = frame["reused"].astype(bool)
    return frame


def suite_pivot(frame: pd.DataFrame, presets: Sequence[str], tasks: Sequence[str]) -> pd.DataFrame:
    """Presets × tasks of the headline metric (mean over the seeds that completed), as strings:
    ``failed`` when every seed of a cell failed, ``-`` when a cell has no completed run yet."""
    heads = {}
    for task in tasks:
        sub = frame[frame.task == task]
        if len(sub):
            heads[task] = f"{task} {sub.headline.iloc[0]} {'↑' if sub.higher_is_better.iloc[0] else '↓'}"
        else:
            heads[task] = task
    labels = list(presets) + ([BIGRAM] if (frame.preset == BIGRAM).any() else [])
    table = []
    for preset in labels:
        line = {"preset": preset}
        for task in tasks:
            cell = frame[(frame.preset == preset) & (frame.task == task)]
            done = cell[cell.status.isin(["completed", "evaluated"])].value.dropna()
            if len(done):
                line[heads[task]] = f"{done.mean():.4f}" + (f" (n={len(done)})" if len(done) < len(cell) else "")
            elif len(cell) and cell.status.str.startswith("failed").all():
                line[heads[task]] = "failed"
            else:
                line[heads[task]] = "-"
        table.append(line)
    return pd.DataFrame(table, columns=["preset"] + [heads[t] for t in tasks])


def _write(rows, presets, tasks, out_dir: Path, budget: Budget, seeds) -> Tuple[pd.DataFrame, pd.DataFrame]:
    frame = suite_frame(rows)
    pivot = suite_pivot(frame, presets, tasks)
    failed = frame[frame.status.str.startswith("failed")]
    lines = [f"# nlsearch suite: budget {budget.ref}, seeds {list(seeds)}", "",
             "Headline metric per task (mean over seeds; ↑ higher is better, ↓ lower is better). "
             "`bigram`: add-one-smoothed byte bigram fitted on the same train batches (lm tasks only).", "",
             markdown_table(pivot), ""]
    if len(failed):
        lines += ["Failed runs:", ""] + [f"- {r.preset} on {r.task} seed {r.seed}: {r.status}"
                                         for r in failed.itertuples()] + [""]
    write_parquet(frame, out_dir / "suite.parquet")
    write_text("\n".join(lines), out_dir / "suite.md")
    return frame, pivot


def _check_names(presets: Sequence[ModelSpec], tasks: Sequence[Union[str, Path]], seeds: Sequence[int]) -> None:
    if not presets:
        raise ValueError("run-suite: no presets given")
    if not tasks:
        raise ValueError("run-suite: no tasks given")
    if not seeds:
        raise ValueError("run-suite: no seeds given")
    for seed in seeds:
        check_seed(seed, "run-suite: seed")


def plan_suite(presets: Sequence[ModelSpec], tasks: Sequence[Union[str, Path]], budget: Union[str, Path, Budget],
               seeds: Sequence[int], device: Optional[str] = None, tasks_dir: Optional[Path] = None
               ) -> List[Tuple[str, ModelSpec, RunPlan]]:
    """Validates every name and plans every (preset, task, seed) run; raises ValueError naming the
    first bad preset, task, budget or seed. Writes nothing."""
    _check_names(presets, tasks, seeds)
    budget = load_budget(budget)
    plans = []
    for spec in presets:
        for task in tasks:
            for seed in seeds:
                try:
                    plan = plan_run(spec, task, budget, seed, device, None, tasks_dir)
                except KeyError as err:                 # load_model_config: unknown preset
                    raise ValueError(err.args[0] if err.args else str(err)) from None
                plans.append((_label(spec, plan), spec, plan))
    seen = set()
    for label, _, plan in plans:
        key = (label, plan.task.ref, plan.seed)
        if key in seen:
            raise ValueError(f"run-suite: model {label!r} on task {plan.task.ref} seed {plan.seed} is asked for "
                             f"twice (a repeated name, or two models with the same name)")
        seen.add(key)
    return plans


def suite_runs(presets: Optional[Sequence[ModelSpec]] = None, tasks: Optional[Sequence[Union[str, Path]]] = None,
               budget: Union[str, Path, Budget] = DEFAULT_BUDGET, seeds: Sequence[int] = (0,),
               out_dir: Union[str, Path] = "results/suite", *, device: Optional[str] = None,
               tasks_dir: Optional[Path] = None) -> list:
    """The runs :func:`run_suite` would do (``PlannedRun`` each, finished where a reusable run is there),
    for ``--dry-run``. Writes nothing."""
    from nlsearch.bench.estimate import PlannedRun

    presets = list(list_presets() if presets is None else presets)
    tasks = list(dict.fromkeys(str(t) for t in (DEFAULT_TASKS if tasks is None else tasks)))
    out = []
    for label, spec, plan in plan_suite(presets, tasks, budget, list(dict.fromkeys(seeds)),
                                        device, tasks_dir):
        run_dir = default_run_dir(Path(out_dir) / "runs", plan)
        try:
            found = _equivalent_run(run_dir, plan)
        except ValueError:
            found = None
        preset = str(spec) if isinstance(spec, (str, Path)) and str(spec) in list_presets() else None
        out.append(PlannedRun.of(label, preset, plan, found is not None, run_dir, found[1] if found else None))
    return out


def run_suite(presets: Optional[Sequence[ModelSpec]] = None, tasks: Optional[Sequence[Union[str, Path]]] = None,
              budget: Union[str, Path, Budget] = DEFAULT_BUDGET, seeds: Sequence[int] = (0,),
              out_dir: Union[str, Path] = "results/suite", log: Optional[Log] = None, *,
              device: Optional[str] = None, tasks_dir: Optional[Path] = None, progress: bool = False
              ) -> pd.DataFrame:
    """Trains every (preset, task, seed) under ``budget`` into ``out_dir/runs/...`` (reusing completed
    runs, resuming killed ones), adds the bigram baseline for ``lm`` tasks, and writes
    ``out_dir/suite.parquet`` and ``out_dir/suite.md`` after every run; returns the table.

    ``presets``: preset names, model YAML files or mappings (default: every preset). ``tasks``: task
    names, ``name@version`` or spec files (default ``DEFAULT_TASKS``). ``log(str)``: one line per run.
    """
    presets = list(list_presets() if presets is None else presets)
    presets = [p for i, p in enumerate(presets)                         # drop repeated names
               if not isinstance(p, (str, Path)) or str(p) not in map(str, presets[:i])]
    tasks = list(dict.fromkeys(str(t) for t in (DEFAULT_TASKS if tasks is None else tasks)))
    seeds = list(dict.fromkeys(seeds))
    plans = plan_suite(presets, tasks, budget, seeds, device, tasks_dir)
    budget = plans[0][2].budget
    out_dir = Path(out_dir)
    check_writable_folder(out_dir, "run-suite output folder")
    log = log or (lambda _msg: None)
    labels = list(dict.fromkeys(label for label, _, _ in plans))
    refs = list(dict.fromkeys(plan.task.ref for _, _, plan in plans))

    rows: List[Dict[str, Any]] = []
    seen = set()
    for _, _, plan in plans:                            # the bigram baselines first: cheap
        if plan.kind == "lm" and (plan.task.ref, plan.seed) not in seen:
            seen.add((plan.task.ref, plan.seed))
            rows.append(bigram_rows(plan))
            log(f"bigram on {plan.task.ref} seed {plan.seed}: bits_per_byte {rows[-1]['value']:.4f}")
    if rows:
        _write(rows, labels, refs, out_dir, budget, seeds)

    for i, (label, _, plan) in enumerate(plans, 1):
        run_dir = default_run_dir(out_dir / "runs", plan)
        row = _base_row(label, plan, run_dir)
        head = f"[{i}/{len(plans)}] {label} on {plan.task.ref} seed {plan.seed}"
        try:
            earlier = _equivalent_run(run_dir, plan)
        except ValueError as err:                       # the folder holds another run: never reuse its numbers
            earlier, row["status"] = None, _failure(err)
        if earlier is not None:
            _record_row(row, earlier[1], reused=True)
            row["run_dir"] = str(earlier[0])
        elif row["status"] == "pending":
            start = time.perf_counter()
            try:
                result = train(plan.cfg, plan.task, plan.budget, plan.seed, run_dir=run_dir, resume=True,
                               device=device, progress=progress, log=lambda msg, head=head: log(f"{head}: {msg}"))
            except Exception as err:                    # noqa: BLE001 - a failed run is a row, not the end
                row["status"], row["wall_time_s"] = _failure(err), time.perf_counter() - start
            else:
                if result.record is not None:
                    _record_row(row, result.record, reused=False)
                else:
                    row["status"] = f"failed: run ended {result.status} at step {result.steps}"
        rows.append(row)
        shown = f"{row['headline']} {row['value']:.4f}" if not math.isnan(row["value"]) else row["status"]
        log(f"{head}: {shown}{' (reused)' if row['reused'] else ''}")
        _write(rows, labels, refs, out_dir, budget, seeds)
    frame, _ = _write(rows, labels, refs, out_dir, budget, seeds)
    return frame
