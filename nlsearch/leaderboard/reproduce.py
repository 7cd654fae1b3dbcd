"""``nlsearch reproduce``: score the baselines under the protocol, add them to the leaderboard, and
write ``results/reproduce/report.md``: our table, the bigram reference for LM, and every published
claim of the protocol's claims file with its source and verdict (``claims.py``), with the numbers.

Baselines go through exactly the rules a submission does (``load_submission`` + ``scoring.Scoring``):
the same budget, seeds and lr sweep, every baseline's runs in one queue (``runner.run_dynamic``). A
baseline already on the leaderboard (same config hash, protocol and track) is reused, so an
interrupted reproduction continues where it stopped (runs resume too).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple, Union

from nlsearch.config import is_file_ref
from nlsearch.display import markdown_table
from nlsearch.io import check_writable_folder, write_text
from nlsearch.leaderboard.claims import (JUDGED, Claim, Verdict, claim_seeds, extra_seeds, judge, load_claims,
                                         reads_complete, scale_text, tally, testable_at)
from nlsearch.leaderboard.entry import TaskResult
from nlsearch.leaderboard.protocol import Protocol, ProtocolTask, load_protocol
from nlsearch.leaderboard.runner import Job, Log, run_dynamic
from nlsearch.leaderboard.render import load_report, render
from nlsearch.leaderboard.scoring import RunError, Scoring, partial_results
from nlsearch.leaderboard.store import DEFAULT_ROOT, LeaderboardError, Store, read_entry
from nlsearch.leaderboard.submit import build_entry, load_submission
from nlsearch.leaderboard.table import LEAD_ALPHA, claim_numbers, column_label, display, mean_std
from nlsearch.provenance import code_commit

if TYPE_CHECKING:
    from nlsearch.bench.estimate import PlannedRun

BASELINES = ("transformer", "mamba", "mamba2", "titans-lmm", "titans-mac", "titans-mag", "titans-mal", "deltanet",
             "gated-deltanet", "linear-attention", "ttt-linear", "ttt-mlp", "cms", "cms-steps",
             "cms-steps-single", "hope")
AUTHOR = "nlsearch reproduce"
RUNS = Path("results/reproduce/runs")     # committed: a reproduction grows across machines and sittings
ModelSpec = Union[str, Dict[str, Any]]


def _name(spec: ModelSpec) -> str:
    """A baseline's entry name: the preset name, a file's stem, or a mapping's ``name``."""
    if isinstance(spec, dict):
        return str(spec.get("name") or "model")
    return Path(spec).stem if is_file_ref(str(spec)) else str(spec)


def existing_baseline(spec: ModelSpec, protocol: Protocol, budget, store: Store) -> Optional[Path]:
    """The file of this baseline's entry on the track, or None when it has none yet; a
    :class:`LeaderboardError` when its config is there as something else (a submission)."""
    existing = store.find(load_submission(spec, protocol).sha256, protocol.ref, budget.ref)
    if existing is None:
        return None
    entry = read_entry(existing)
    if entry.kind != "baseline" or entry.verification is not None:
        raise LeaderboardError(f"its config is on this track as {entry.kind} {entry.name!r} ({existing}), "
                               f"not as a baseline the leaderboard measured in full: remove that entry to "
                               f"reproduce this baseline")
    return existing


def _roles_read(name: str, claims: Sequence[Claim], protocol: Protocol, budget) -> set:
    return {r for c in claims if name in c.models() and testable_at(c, protocol, budget)
            for r in c.check.read_roles()}


def claim_tasks_for(name: str, claims: Sequence[Claim], protocol: Protocol, budget) -> List[ProtocolTask]:
    """The protocol's claim tasks that a claim testable on this track reads with baseline ``name``."""
    wanted = _roles_read(name, claims, protocol, budget)
    return [t for t in protocol.claim_tasks if t.role in wanted]


def tasks_claims_read(name: str, claims: Sequence[Claim], protocol: Protocol, budget) -> set:
    """Refs of every task (ranked or claim task) that a claim testable on this track reads with
    baseline ``name``: its runs decide a verdict."""
    by_role = protocol.by_role()
    return {by_role[r].task for r in _roles_read(name, claims, protocol, budget) if r in by_role}


def seeded_claims(claims: Sequence[Claim], protocol: Protocol, budget
                  ) -> List[Tuple[Claim, List[ProtocolTask], Tuple[int, ...]]]:
    """The claims that read more seeds than the protocol's (``claim.seeds``) and get them on this
    track, each with the tasks it reads and its seeds (``claims.claim_seeds``): testable here, and
    every task it reads trained here (ranked on the track, or a claim task). The others are judged at
    the protocol's seeds, from the entries (a task not trained here makes them not testable)."""
    here = {t.role: t for t in protocol.ranked(budget) + protocol.claim_tasks if t.role}
    out = []
    for claim in claims:
        roles = claim.check.read_roles()
        if extra_seeds(claim, protocol) and testable_at(claim, protocol, budget) and all(r in here for r in roles):
            rules = list({here[r].task: here[r] for r in roles}.values())
            out.append((claim, rules, claim_seeds(claim, protocol)))
    return out


def claim_seed_tasks(name: str, claims: Sequence[Claim], protocol: Protocol, budget
                     ) -> Dict[Tuple[int, ...], List[ProtocolTask]]:
    """The runs baseline ``name`` trains beyond the protocol's seeds for :func:`seeded_claims`: the
    tasks (ranked or claim tasks) by the extra seeds they need, the most any such claim reads of
    ``name`` on the task (claims that read the same model and task share these runs)."""
    most: Dict[str, Tuple[Tuple[int, ...], ProtocolTask]] = {}
    for claim, rules, seeds in seeded_claims(claims, protocol, budget):
        if name in claim.models():
            more = seeds[len(protocol.seeds):]
            for rule in rules:
                before = most.get(rule.task, ((), rule))[0]      # the seeds run on from the protocol's:
                most[rule.task] = max(before, more, key=len), rule    # the longer holds the shorter
    out: Dict[Tuple[int, ...], List[ProtocolTask]] = {}
    for seeds, rule in most.values():
        out.setdefault(seeds, []).append(rule)
    return out


def bigram_reference(protocol: Protocol, budget) -> Optional[Dict[str, float]]:
    """Bits per byte of the add-one bigram (fitted on the same train batches) on the protocol's lm task,
    mean and std over the protocol's seeds; None without an lm task."""
    from nlsearch.train.plan import plan_run
    from nlsearch.eval.bigram import bigram_score

    rule = protocol.by_role().get("lm")
    if rule is None:
        return None
    plans = [plan_run("transformer", rule.task, budget, seed, tasks_dir=protocol.resolve_tasks_dir())
             for seed in protocol.seeds]
    values = [bigram_score(p.task, p.kb, p.seed, p.train_lengths, p.eval_lengths, budget.eval_seed) for p in plans]
    return {"task": rule.task, "mean": statistics.fmean(values), "std": statistics.stdev(values)}


def _verdict_lines(verdicts: Sequence[Verdict]) -> List[str]:
    lines = ["| claim | source | verdict | numbers (mean ± std over seeds, n) |", "|---|---|---|---|"]
    for v in verdicts:
        numbers = "<br>".join(claim_numbers(v.numbers)) or "-"
        why = v.reason if v.outcome in ("not testable", "pending") else f"tested: {v.reason}"
        lines.append(f"| {v.claim.claim} | {v.claim.source} | **{v.outcome}** ({why}) | {numbers} |")
    return lines


def _setting(params: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


def setting_lines(verdicts: Sequence[Verdict], protocol: Protocol) -> List[str]:
    """Per claim: the source's setting beside ours (the tasks its check reads, the models, the scale)."""
    from nlsearch.tasks import load_task

    roles = protocol.by_role()
    lines = ["| claim | the source measured | we measure |", "|---|---|---|"]
    for v in verdicts:
        src, check = v.claim.source_setting, v.claim.check
        theirs = [_setting(src.task), f"{src.metric} at {src.eval_lengths and list(src.eval_lengths) or 'its length'}",
                  f"models: {', '.join(src.models)}",
                  f"scale: {src.train_sequences or src.train_tokens or '?':,} "
                  f"{'sequences' if src.train_sequences else 'tokens'}" + (f" ({src.scale})" if src.scale else "")]
        ours = []
        for role in check.read_roles():
            if role in roles:
                spec = load_task(roles[role].task, protocol.resolve_tasks_dir()).spec
                ours.append(f"{role} = {roles[role].task}: {_setting(spec.generator.params)}, "
                            f"train {list(spec.lengths.train)}, eval {list(spec.lengths.eval)}")
        ours += [f"read at: {check.length}", f"models: {', '.join(v.claim.models())}"]
        if v.scale is not None:
            ours.append(f"scale: {scale_text(v.scale)}")
        if src.extrapolates:
            ours.append(f"extrapolates: {src.extrapolates}")
        lines.append(f"| {v.claim.id} | {'<br>'.join(theirs)} | {'<br>'.join(ours)} |")
    return lines


Progress = Dict[str, Dict[str, Tuple[int, int, Optional[TaskResult]]]]   # name -> task -> (done, needed, so far)


def progress(specs: Sequence[ModelSpec], claims: Sequence[Claim], protocol: Protocol, budget,
             runs_dir: Path) -> Progress:
    """Per baseline and task (ranked tasks, then the claim tasks its claims read): runs finished, runs
    the protocol needs, and the result over the seeds finished so far (``scoring.partial_results``)."""
    out: Progress = {}
    for spec in specs:
        data = load_submission(spec, protocol).data
        tasks = list(protocol.ranked(budget)) + claim_tasks_for(_name(spec), claims, protocol, budget)
        out[_name(spec)] = partial_results(data, protocol, budget, runs_dir, tasks)
    return out


def _runs_done(tasks: Dict[str, Tuple[int, int, Optional[TaskResult]]]) -> str:
    return f"{sum(d for d, _, _ in tasks.values())}/{sum(n for _, n, _ in tasks.values())}"


def _cell(done: int, result: Optional[TaskResult], factors: int) -> str:
    if result is None:
        return f"sweep {done}/{factors}" if done else "-"
    mean, std, n = result.aggregate()
    return f"{mean_std(mean, std)} (n={n})"


def progress_lines(prog: Progress, protocol: Protocol, budget, entries: Sequence[str]) -> List[str]:
    """The table of runs so far: per baseline its runs done, and per ranked task its mean ± std over the
    seeds finished (n), "sweep k/3" while the lr sweep is still running, "-" before its first run."""
    from nlsearch.tasks import load_task

    rules = protocol.ranked(budget)
    heads = []
    for rule in rules:
        spec = load_task(rule.task, protocol.resolve_tasks_dir()).spec
        hib = {m.name: m.higher_is_better for m in spec.metrics}[rule.metric]
        heads.append(column_label(rule.task, rule.metric, hib))
    lines = ["| model | runs done | " + " | ".join(heads) + " | entry |",
             "|---|---|" + "---|" * len(heads) + "---|"]
    for name, tasks in prog.items():
        cells = [_cell(tasks[r.task][0], tasks[r.task][2], len(protocol.lr_sweep.factors)) for r in rules]
        entry = "yes" if name in entries else "-"
        lines.append(f"| {name} | {_runs_done(tasks)} | " + " | ".join(cells) + f" | {entry} |")
    return lines


def claims_seeded(specs: Sequence[ModelSpec], claims: Sequence[Claim], protocol: Protocol, budget,
                  runs_dir: Path) -> Dict[str, Progress]:
    """Per claim of :func:`seeded_claims`: per baseline it names among ``specs`` and per task it reads,
    (runs done, runs needed, the result over the seeds done) at the claim's seeds, from the runs
    folder: what :func:`claims.judge` reads for it (a model not among ``specs`` is left out: the claim
    then waits for it)."""
    datas = {_name(s): load_submission(s, protocol).data for s in specs}
    cells: Dict[Tuple[str, str, Tuple[int, ...]], Any] = {}     # claims that share runs read them once
    out: Dict[str, Progress] = {}
    for claim, rules, seeds in seeded_claims(claims, protocol, budget):
        out[claim.id] = {}
        for m in (m for m in claim.models() if m in datas):
            for rule in rules:
                if (m, rule.task, seeds) not in cells:
                    cells[(m, rule.task, seeds)] = partial_results(datas[m], protocol, budget, runs_dir, [rule],
                                                                   seeds)[rule.task]
                out[claim.id].setdefault(m, {})[rule.task] = cells[(m, rule.task, seeds)]
    return out


def _seed_runs(seeded: Dict[str, Progress], prog: Progress) -> Dict[Tuple[str, str], Tuple[int, int]]:
    """(model, task) -> (runs done, runs needed) beyond the protocol's seeds (``prog``), over every claim
    that reads more (the most any of them reads)."""
    out: Dict[Tuple[str, str], Tuple[int, int]] = {}
    for cells in seeded.values():
        for model, tasks in cells.items():
            for task, (done, needed, _) in tasks.items():
                base = prog.get(model, {}).get(task, (0, 0, None))
                here = (done - base[0], needed - base[1])
                out[(model, task)] = max(out.get((model, task), (0, 0)), here, key=lambda x: x[1])
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def report_text(protocol: Protocol, budget, store: Store, verdicts: Sequence[Verdict],
                bigram: Optional[Dict[str, float]], names: Sequence[str], prog: Optional[Progress] = None,
                left: Optional[str] = None, written: Optional[str] = None,
                seeded: Optional[Dict[str, Progress]] = None) -> str:
    index = store.index()
    table = display(index, protocol.ref, budget.ref)
    table = table[table.name.isin(list(names))]
    lines = [f"# Reproduction of the baseline comparisons: protocol {protocol.ref}, budget {budget.ref}", "",
             f"Written by `nlsearch reproduce` on {written or _now()}, "
             f"commit {code_commit()}, after every finished run. Seeds {list(protocol.seeds)}; lr sweep "
             f"x{list(protocol.lr_sweep.factors)} for every model on seed {protocol.seeds[0]}, the best factor "
             f"then for every seed; ranked metric per task as mean ± sample std over the seeds finished (n) "
             f"(↑ higher / ↓ lower is better); \"best\": first on the task among the track's entries, "
             f"\"≈ best\": within seed noise of it (Welch's t-test, p ≥ {LEAD_ALPHA}, not adjusted).", ""]
    if prog is not None:
        more = _seed_runs(seeded or {}, prog)
        done = sum(d for tasks in prog.values() for d, _, _ in tasks.values()) + sum(d for d, _ in more.values())
        needed = sum(n for tasks in prog.values() for _, n, _ in tasks.values()) + sum(n for _, n in more.values())
        lines += [f"## Runs so far: {done} of {needed}", "",
                  *progress_lines(prog, protocol, budget, set(table.name)), ""]
        if more:
            lines += ["Runs beyond the protocol's seeds, for the claims that read more (never ranked): "
                      + ", ".join(f"{m} on {t} {d}/{n}" for (m, t), (d, n) in more.items()) + ".", ""]
        if left is not None:
            lines += [f"Left, estimated from each preset's measured step time (`reproduce --dry-run`): {left}.", ""]
    if len(table):
        lines += ["## Complete baselines (leaderboard entries, ranked among themselves)", "", markdown_table(table), ""]
    commits = sorted({s.run.git_commit for e in store.entries(protocol.ref, budget.ref) if e.name in names
                      for t in e.tasks.values() for s in t.seeds if s.run is not None})
    if commits:
        lines += [f"Runs produced by commits: {', '.join(commits)} (per seed in each entry's `run`).", ""]
    if bigram is not None:
        lines += [f"Reference: an add-one-smoothed byte bigram fitted on the same train batches scores "
                  f"{mean_std(bigram['mean'], bigram['std'])} bits per byte on {bigram['task']}.", ""]
    pending = " (runs still to come)" if any(v.outcome == "pending" for v in verdicts) else ""
    lines += ["## Published claims", "", f"{tally([v.outcome for v in verdicts])}{pending}.", "",
              *_verdict_lines(verdicts), ""]
    return "\n".join(lines)


def reproduce_runs(budget: Optional[str] = None, *, protocol: Union[Protocol, str, Path, None] = None,
                   root: Union[str, Path] = DEFAULT_ROOT, runs_dir: Union[str, Path] = RUNS,
                   baselines: Optional[Sequence[ModelSpec]] = None) -> List[PlannedRun]:
    """The runs :func:`reproduce` would do (``PlannedRun`` each; a baseline already on the leaderboard
    counts as finished), for ``--dry-run``. Writes nothing."""
    protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    track = protocol.load_budget(budget)
    return _planned(list(BASELINES if baselines is None else baselines), protocol, track, _claims(protocol),
                    Store(root), Path(runs_dir))


def _planned(specs: Sequence[ModelSpec], protocol: Protocol, track, claims: Sequence[Claim], store: Store,
             runs_dir: Path) -> List[PlannedRun]:
    from nlsearch.leaderboard.scoring import planned_runs

    out: List[PlannedRun] = []
    for spec in specs:
        sub = load_submission(spec, protocol)
        preset = spec if isinstance(spec, str) and not is_file_ref(spec) else None
        runs = planned_runs(sub.data, _name(spec), preset, protocol, track, runs_dir)
        if store.find(sub.sha256, protocol.ref, track.ref) is not None:
            runs = [dataclasses.replace(r, finished=True) for r in runs]
        extra = claim_tasks_for(_name(spec), claims, protocol, track)
        if extra:
            runs += planned_runs(sub.data, _name(spec), preset, protocol, track, runs_dir, tasks=extra)
        for seeds, rules in claim_seed_tasks(_name(spec), claims, protocol, track).items():
            runs += planned_runs(sub.data, _name(spec), preset, protocol, track, runs_dir, tasks=rules, seeds=seeds)
        out.extend(runs)
    return out


def _claims(protocol: Protocol) -> Sequence[Claim]:
    """The protocol's claims, held to its roles and tasks (``load_claims``); none without a claims file."""
    path = protocol.claims_path()
    return load_claims(path, protocol).claims if path is not None else ()


def reproduce(budget: Optional[str] = None, workers: int = 1, *, protocol: Union[Protocol, str, Path, None] = None,
              root: Union[str, Path] = DEFAULT_ROOT, runs_dir: Union[str, Path] = RUNS,
              out_dir: Union[str, Path] = "results/reproduce", baselines: Optional[Sequence[ModelSpec]] = None,
              address: Optional[str] = None, log: Optional[Log] = None, hours: Optional[float] = None) -> Path:
    """Scores every baseline (default ``BASELINES``; preset names or config mappings), adds them to the
    leaderboard at ``root``, judges the protocol's claims and writes ``out_dir/report.md`` (and
    ``report.json``); returns the report's path. ``hours``: start no run that would end later than
    that from now by its estimate (:meth:`_Reproduction.fits`); the runs left wait for the next call."""
    if hours is not None and not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"hours must be a positive number, got {hours}")
    log = log or (lambda _msg: None)
    protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    track = protocol.load_budget(budget)
    if hours is not None and track.gpu_share():
        raise ValueError(f"--hours estimates runs from CPU step times (results/bench/models-cpu.parquet); "
                         f"{track.ref} trains on GPUs, where they would be far off: leave --hours out")
    specs = list(BASELINES if baselines is None else baselines)
    claims = _claims(protocol)
    for spec in specs:                         # validate every config before the first run
        load_submission(spec, protocol)
    for folder, what in ((root, "leaderboard folder (--dir)"), (runs_dir, "runs folder (--runs)"),
                         (out_dir, "report folder (--out)")):
        check_writable_folder(folder, what)
    specs = claims_first(specs, [c for c in claims if testable_at(c, protocol, track)])   # verdicts soonest
    run = _Reproduction(protocol, track, specs, claims, Store(root), Path(runs_dir), Path(out_dir),
                        None if address else workers, log)
    return run.run(workers, address, hours)


SPARE = 1.25
"""A run is started before a deadline only when its estimate times this still ends before it: estimates
come from a quiet machine's step times (finished cpu runs took 0.7-1.3x theirs)."""


class _Reproduction:
    """One ``reproduce`` call: every baseline's scorings (its ranked tasks, which make its entry, the
    claim tasks its claims read, and the seeds beyond the protocol's that a claim reads: queued per
    task as soon as its lr factor is chosen) in one queue, prioritised in the claims-first order of
    ``specs``; the report rewritten as runs finish, an entry added as each baseline's ranked tasks
    complete."""

    def __init__(self, protocol: Protocol, track, specs: Sequence[ModelSpec], claims: Sequence[Claim], store: Store,
                 runs_dir: Path, out_dir: Path, workers: Optional[int], log: Log):
        self.protocol, self.track, self.specs, self.claims, self.store = protocol, track, specs, claims, store
        self.runs_dir, self.out_dir, self.workers, self.log = runs_dir, out_dir, workers, log
        # (baseline, "ranked" | "claims" | "seeds", spec, its runs): its entry's tasks, the claim tasks its
        # claims read, its runs beyond the protocol's seeds for the claims that read more
        self.scorings: List[Tuple[str, str, ModelSpec, Scoring]] = []
        self.more = {_name(s): claim_seed_tasks(_name(s), claims, protocol, track) for s in specs}
        for spec in specs:                        # every baseline's place on the board, before any run
            name = _name(spec)
            try:
                found = existing_baseline(spec, protocol, track, store)
            except LeaderboardError as err:
                raise LeaderboardError(f"baseline {name}: {err}") from None
            data = load_submission(spec, protocol).data
            if found is not None:
                log(f"{name}: already on the leaderboard ({found})")
                self._seed_scorings(name, spec, tasks=set(read_entry(found).tasks))
            else:
                self.scorings.append((name, "ranked", spec, Scoring(data, protocol, track, runs_dir)))
            rules = claim_tasks_for(name, claims, protocol, track)
            if rules:
                self.scorings.append((name, "claims", spec, Scoring(data, protocol, track, runs_dir, tasks=rules)))
        self.bigram = bigram_reference(protocol, track)
        self.extra: Dict[str, Dict[str, TaskResult]] = {}      # claim-task results by baseline
        self.errors: Dict[str, str] = {}                        # baselines whose runs raised: pending
        self.seed_errors: Dict[str, str] = {}                   # ... runs at a claim's extra seeds only
        # baselines still to score (their extra seeds never hold an entry or a protocol-seed claim back)
        self.pending = list(dict.fromkeys(name for name, kind, *_ in self.scorings if kind != "seeds"))
        self.decisive = {_name(s): tasks_claims_read(_name(s), claims, protocol, track) for s in specs}
        self.order = {_name(s): k for k, s in enumerate(specs)}        # baselines, claims first
        self.complete: List[int] = []                           # scorings whose runs are all back, not scored

    def write(self) -> Path:
        """The report as things stand (after every run trained, and after every baseline), and the page
        rendered again from it: the page quotes the report (its verdicts, when it was written, from which
        commit, the runs finished), so it never shows an older report than the one it links to."""
        path = _write_report(self.protocol, self.track, self.store, self.claims, self.bigram, self.specs,
                             self.pending, self.out_dir, self.extra, self.runs_dir, self.workers)
        render(self.store.root, self.protocol, self.out_dir / "report.json")
        return path

    def fits(self, hours: float) -> Callable[[Job], bool]:
        """Whether a run may start now and still end within ``hours`` of this call: a finished one is
        reused at once; else its estimate (:func:`nlsearch.bench.estimate.seconds_left`: the training
        tokens left after its checkpoint at its preset's measured core-seconds per token, one thread a
        run, scaled by the finished runs' measured speed: ``estimate.calibration``) times ``SPARE`` must
        end before then. A preset without a timing is started (it cannot be
        told). On a Ray cluster a run is counted from when it is handed out, not from when it starts."""
        from nlsearch.bench.estimate import calibration, load_timing, seconds_left
        from nlsearch.leaderboard.scoring import cached_plan
        from nlsearch.train import default_run_dir
        from nlsearch.train.record import finished_outcome

        deadline, table = time.monotonic() + hours * 3600, load_timing()
        calibrated = calibration(_planned(self.specs, self.protocol, self.track, self.claims, self.store,
                                          self.runs_dir), table)
        tasks_dir = self.protocol.resolve_tasks_dir()

        def fits(job: Job) -> bool:
            plan = cached_plan(job.model, job.lr_factor, job.task, self.track, job.seed, tasks_dir)
            run_dir = default_run_dir(job.runs_dir, plan)
            try:
                if finished_outcome(run_dir, plan.identity()) is not None:
                    return True
            except ValueError:
                pass
            preset = job.model.get("name")
            seconds = seconds_left(plan, preset, table, run_dir, scale=calibrated.factor(preset))
            if math.isnan(seconds):
                return True
            return time.monotonic() + SPARE * seconds <= deadline
        return fits

    def run(self, workers: int, address: Optional[str], hours: Optional[float] = None) -> Path:
        self.write()
        starts: List[Tuple[int, Any]] = []
        for i in range(len(self.scorings)):
            name, kind, _, scoring = self.scorings[i]
            if kind == "claims":
                self.log(f"{name}: claim tasks {[r.task for r in scoring.rules]}")
            starts += self._start(i)
            starts += self._chosen(i, dict(scoring.chosen))      # no sweep: the lr factors are known at once
        self.settle()
        done, needed = load_report(self.out_dir / "report.json").runs_done() or (0, 0)
        self.log(f"{done} of {needed} runs finished already: reused, not logged one by one")
        refused = run_dynamic(starts, self.follow, workers, address, self.log, self.track.threads,
                              self.track.gpu_share(), on_result=self.settle, log_reused=False,
                              fits=None if hours is None else self.fits(hours))
        report = self.write()
        if refused:
            self.log(f"{len(refused)} run(s) not started: by their estimates they would end more than {hours:g} "
                     f"hours after the start (--hours); they and the runs that follow them wait for the next "
                     f"call: {', '.join(job.label() for job in refused[:4])}"
                     + (f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""))
        if self.errors or self.seed_errors:
            raise RunError("; ".join(filter(None, [
                self.errors and f"{len(self.errors)} baseline(s) not scored ({report} lists them as pending)",
                self.seed_errors and f"{len(self.seed_errors)} baseline(s) miss runs at a claim's extra seeds "
                                     f"(its claims are pending)"])) + ":\n"
                + "\n".join([*self.errors.values(), *self.seed_errors.values()]))
        return report

    def _priority(self, i: int, job: Any) -> Tuple[bool, int, int]:
        """A run's place in the queue: the runs a testable claim reads (its models on the tasks it
        reads, ranked or claim tasks) before every other, a verdict waiting on those only; then by
        baseline in the claims-first order; then by scoring (ranked tasks, claim tasks, then the extra
        seeds, in the order they were added)."""
        name = self.scorings[i][0]
        return job.task not in self.decisive[name], self.order[name], i

    def follow(self, priority: Tuple[bool, int, int], result: Any) -> List[Tuple[Tuple[bool, int, int], Any]]:
        """A finished run's follow-ups (quick: a freed worker waits for them); a scoring complete
        without error starts its baseline's extra seeds for the claims that read more, at the lr
        factors it chose."""
        i = priority[2]
        scoring = self.scorings[i][3]
        before = set(scoring.chosen)
        jobs = [(self._priority(i, job), job) for job in scoring.take(result)]
        if scoring.done:
            self.complete.append(i)
        return jobs + self._chosen(i, {t: f for t, f in scoring.chosen.items() if t not in before})

    def _chosen(self, i: int, factors: Dict[str, float]) -> List[Tuple[Tuple[bool, int, int], Any]]:
        """Scoring ``i`` has chosen ``factors`` (task -> lr factor): its baseline's runs at the claims'
        extra seeds on those tasks, queued now."""
        name, kind, spec, _ = self.scorings[i]
        if kind == "seeds" or not factors:
            return []
        first = len(self.scorings)
        self._seed_scorings(name, spec, factors)
        return [job for k in range(first, len(self.scorings)) for job in self._start(k)]

    def _seed_scorings(self, name: str, spec: ModelSpec, factors: Optional[Dict[str, float]] = None,
                       tasks: Collection[str] = ()) -> None:
        """Adds scorings of ``name``'s runs for the claims that read more seeds (``claim_seed_tasks``):
        the extra seeds alone on the tasks ``factors`` names, at those lr factors (a sweep's choice);
        or, without ``factors``, on ``tasks`` (a baseline already an entry) the claims' every seed and
        the sweep, the runs in the folder reused (an entry scored from another runs folder trains here
        what the claims read)."""
        data = load_submission(spec, self.protocol).data
        for extra, rules in self.more.get(name, {}).items():
            rules = [r for r in rules if r.task in (tasks if factors is None else factors)]
            if not rules:
                continue
            if factors is None:
                seeds = tuple(self.protocol.seeds) + extra
                scoring = Scoring(data, self.protocol, self.track, self.runs_dir, seeds=seeds, tasks=rules)
            else:
                seeds = extra
                scoring = Scoring(data, self.protocol, self.track, self.runs_dir, seeds=seeds, tasks=rules,
                                  lr_factors={r.task: factors[r.task] for r in rules})
            self.scorings.append((name, "seeds", spec, scoring))
            self.log(f"{name}: seeds {list(seeds)} on {[r.task for r in rules]} for the claims that read them")

    def _start(self, i: int) -> List[Tuple[Tuple[bool, int, int], Any]]:
        """Scoring ``i``'s first runs, each with its place in the queue (none: it is complete)."""
        jobs = self.scorings[i][3].start()
        if not jobs:
            self.complete.append(i)
        return [(self._priority(i, job), job) for job in jobs]

    def settle(self, result: Any = None) -> None:
        """After a run, once the freed worker has its next one: score what is complete, rewrite the
        report (not for a reused run: it was in the first report)."""
        settled = bool(self.complete)
        while self.complete:
            self._scored(self.complete.pop(0))
        if settled or (result is not None and not result.reused):
            self.write()

    def _scored(self, i: int) -> None:
        name, kind, spec, scoring = self.scorings[i]
        try:
            tasks = scoring.result()
        except RunError as err:
            line = f"baseline {name} ({kind} tasks): {err}"
            errors = self.seed_errors if kind == "seeds" else self.errors
            errors[name] = "\n".join(filter(None, [errors.get(name), line]))
            self.log(line)
            return
        if kind == "claims":
            self.extra[name] = tasks
        elif kind == "seeds":
            self.log(f"{name}: seeds {scoring.seeds} done on {list(tasks)}")
        else:
            entry = build_entry(load_submission(spec, self.protocol), name, AUTHOR, "baseline", self.protocol,
                                self.track, tasks)
            try:
                path = self.store.add(entry)
            except LeaderboardError as err:
                raise LeaderboardError(f"baseline {name}: {err}") from None
            # the report written next (``settle``) renders the page: every baseline shows as soon as it is complete
            self.log(f"{name}: added {path}; {self.store.root / 'README.md'} and index.html are re-rendered "
                     f"with the report")
        if all(s.done for n, k, _, s in self.scorings if n == name and k != "seeds") and name not in self.errors:
            self.pending = [n for n in self.pending if n != name]


def claims_first(specs: Sequence[ModelSpec], claims: Sequence[Claim]) -> List[ModelSpec]:
    """The baselines in the order that decides claims soonest: the cheapest claim's models first (cost:
    the sum of its models' measured core-seconds per training token at T=512; every baseline trains
    the same runs), cheapest model first within a claim (so the baselines it shares with other claims
    become entries early), then the next claim's, then every other baseline in the given order."""
    from nlsearch.bench.estimate import core_seconds_per_token, load_timing

    by_name = {_name(s): s for s in specs}
    table = load_timing()

    def model_cost(model: str) -> float:
        seconds = core_seconds_per_token(table, model, 512)
        return seconds if seconds == seconds else math.inf              # an unmeasured model: last

    def cost(claim: Claim) -> float:              # every baseline trains the same runs: its step time decides
        return sum(model_cost(m) for m in claim.models())

    order: List[str] = []
    for claim in sorted(claims, key=cost):
        order += [m for m in sorted(claim.models(), key=model_cost) if m in by_name and m not in order]
    order += [n for n in by_name if n not in order]
    return [by_name[n] for n in order]


def _finished_baselines(specs: Sequence[ModelSpec], pending: Sequence[str], prog: Progress, store: Store,
                        claims: Sequence[Claim], protocol: Protocol, track) -> Dict[str, Dict[str, TaskResult]]:
    """The baselines of ``pending`` whose config is on the leaderboard already and whose claim tasks
    have every run in the runs folder, with those tasks' results (by task ref): a reproduction called
    again has nothing left to train for them, so its report judges their claims from its first
    writing instead of calling them pending until the loop reaches them."""
    out: Dict[str, Dict[str, TaskResult]] = {}
    for spec in specs:
        name = _name(spec)
        if name not in pending or name not in prog:
            continue
        if store.find(load_submission(spec, protocol).sha256, protocol.ref, track.ref) is None:
            continue
        cells = {t.task: prog[name].get(t.task) for t in claim_tasks_for(name, claims, protocol, track)}
        if all(c is not None and c[0] == c[1] and c[2] is not None for c in cells.values()):
            out[name] = {task: c[2] for task, c in cells.items()}
    return out


def _write_report(protocol: Protocol, track, store: Store, claims: Sequence[Claim], bigram,
                  specs: Sequence[ModelSpec], pending: Sequence[str], out: Path,
                  extra: Optional[Dict[str, Dict[str, TaskResult]]] = None, runs_dir: Optional[Path] = None,
                  workers: Optional[int] = None) -> Path:
    """``out/report.md`` and ``report.json`` from the entries so far, the claim tasks' results (``extra``:
    by baseline name and task ref) and, with ``runs_dir``, every run finished so far and what the rest
    costs (the dry run's estimate; wall-clock hours with ``workers``); claims that read a baseline still
    to score (``pending``) are ``pending``, naming the runs each still misses."""
    names = [_name(s) for s in specs]
    prog = progress(specs, claims, protocol, track, runs_dir) if runs_dir is not None else None
    entries = store.entries(protocol.ref, track.ref)
    if prog is not None:                          # finished before this call: judged from their runs at once
        done = _finished_baselines(specs, pending, prog, store, claims, protocol, track)
        pending, extra = [n for n in pending if n not in done], {**done, **(extra or {})}
    measured = {} if prog is None else {    # a pending baseline's tasks whose every run is back
        name: {task: r for task, (done, needed, r) in prog[name].items() if done == needed and r is not None}
        for name in pending if name in prog}
    seeded = {} if runs_dir is None else claims_seeded(specs, claims, protocol, track, runs_dir)
    verdicts = [judge(c, entries, protocol, track.name, pending, budget=track, extra=extra, measured=measured,
                      seeded=seeded.get(c.id)) for c in claims]
    for v in verdicts:
        if v.outcome == "pending" and prog is not None and v.claim.id not in seeded:
            missing = [f"{m} {_runs_done(prog[m])} runs done" for m in v.claim.models()
                       if m in pending and m in prog and not reads_complete(v.claim, protocol, measured.get(m, {}))]
            v.reason = f"waiting for {', '.join(missing)}"
        elif v.outcome in JUDGED and v.claim.id not in seeded:      # (a seeded claim reads its own runs)
            early = [m for m in v.claim.models() if m in pending and m in measured]
            if early:
                v.reason += (f" (judged from the finished runs of {' and '.join(early)} on the tasks it reads; "
                             f"{'its entry is' if len(early) == 1 else 'their entries are'} still to come)")
    left = None
    if runs_dir is not None:
        from nlsearch.bench.estimate import estimate, load_timing, summary_line

        left = summary_line(estimate(_planned(specs, protocol, track, claims, store, runs_dir), load_timing()),
                            workers)
    written = _now()
    text = report_text(protocol, track, store, verdicts, bigram, names, prog, left, written, seeded)
    data = [{"id": v.claim.id, "claim": v.claim.claim, "source": v.claim.source, "outcome": v.outcome,
             "reason": v.reason, "numbers": {k: [None if math.isnan(x) else x for x in xs]
                                             for k, xs in v.numbers.items()},
             "source_setting": v.claim.source_setting.model_dump(mode="json"),
             "scale": None if v.scale is None else dict(zip(("ours", "source", "unit"), v.scale)),
             "claim_tasks": {n: {t: r.aggregate() for t, r in tasks.items()} for n, tasks in (extra or {}).items()
                             if n in v.claim.models() and tasks},
             "seeds": list(claim_seeds(v.claim, protocol)) if v.claim.id in seeded else list(protocol.seeds),
             "runs_at_seeds": {m: {t: {"done": c[0], "needed": c[1]} for t, c in cells.items()}
                           for m, cells in seeded.get(v.claim.id, {}).items()}}
            for v in verdicts]
    runs = None if prog is None else {
        name: {task: {"done": d, "needed": n, "lr_factor": None if r is None else r.lr_factor,
                      "mean_std_n": None if r is None else [None if isinstance(x, float) and math.isnan(x) else x
                                                            for x in r.aggregate()]}
               for task, (d, n, r) in tasks.items()} for name, tasks in prog.items()}
    seed_runs = None if prog is None else [{"model": m, "task": t, "done": d, "needed": n}
                                           for (m, t), (d, n) in _seed_runs(seeded, prog).items()]
    write_text(json.dumps({"protocol": protocol.ref, "budget": track.ref, "written": written, "commit": code_commit(),
                           "runs": runs, "seed_runs": seed_runs, "claims": data}, indent=1)
               + "\n", out / "report.json")
    return write_text(text, out / "report.md")
