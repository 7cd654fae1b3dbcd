"""``nlsearch search FILE`` and ``nlsearch space show FILE``."""
from __future__ import annotations

import argparse
from typing import List

import pandas as pd
from rich.console import Console

from nlsearch.display import rich_table, safe
from nlsearch.runtime import interrupt_exit


def _dimension_rows(space) -> List[dict]:
    from nlsearch.search.space import Param

    def describe(spec: Param) -> tuple:
        if spec.choices is not None:
            return "categorical", ", ".join(str(c) for c in spec.labels)
        bounds = spec.int if spec.int is not None else spec.float
        kind = "int" if spec.int is not None else "float"
        extra = " (log)" if spec.log else (f" step {spec.step}" if spec.step else "")
        return kind, f"[{bounds[0]}, {bounds[1]}]{extra}"

    rows = []
    for name, spec in space.params.items():
        when = ", ".join(f"{k} in {v}" for k, v in spec.when.items()) or "always"
        if isinstance(spec, Param):
            kind, values = describe(spec)
            rows.append({"parameter": name, "kind": kind, "values": values, "path": spec.path or name, "when": when})
            continue
        rows.append({"parameter": name, "kind": "group size", "values": f"[{spec.repeat[0]}, {spec.repeat[1]}]",
                     "path": spec.path or ".", "when": when})
        for item, item_spec in spec.each.items():
            kind, values = describe(item_spec)
            rows.append({"parameter": f"{name}.<i>.{item}", "kind": kind, "values": values,
                         "path": f"{spec.path}.{item_spec.path or item} (list)", "when": f"i < {name}"})
    return rows


def _space_show(args: argparse.Namespace, console: Console) -> int:
    import optuna

    from nlsearch.budgets import run_lengths
    from nlsearch.config import to_yaml
    from nlsearch.search.sampling import sample
    from nlsearch.search.driver import resolve_budget
    from nlsearch.search.space import load_space
    from nlsearch.tasks import load_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.file)
    budget = resolve_budget(space)
    console.print(f"[bold]{safe(space.name)}[/bold]: {safe(space.description.strip())}")
    console.print(safe(f"tasks {space.tasks} · budget {budget.ref} · seeds {space.seeds} · trials {space.trials} · "
                       f"sampler {space.sampler.kind} · pruner {space.pruner.kind} · base {space.base}"))
    console.print(safe("objectives: " + ", ".join(f"{o.direction} {o.metric}" for o in space.objectives)))
    if space.constraints:
        console.print(safe("constraints: " + ", ".join(f"{k} in [{b.min}, {b.max}]"
                                                       for k, b in space.constraints.items())))
    if space.match_params:
        m = space.match_params
        console.print(safe(f"match_params: {m.adjust} set so parameters ≈ {m.target:,}"))
    console.print(rich_table(pd.DataFrame(_dimension_rows(space)), "dimensions (applied in this order)"))
    seq_len = run_lengths(budget, load_task(space.tasks[0]))[0][0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed), directions=space.directions)
    cand = sample(space, study.ask(), seq_len)
    console.print(safe(f"one sampled candidate (seed {args.seed}): {cand.sampled}"))
    console.print(f"params {cand.facts['params']:,.0f} · state {cand.facts['state_size']:,.0f} at T={seq_len} · "
                  f"nesting depth {cand.facts['nesting_depth']:.0f}")
    console.print(safe(to_yaml(cand.config)))
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    """``--report``: summary, tables and plots rebuilt from a study on disk; nothing is trained."""
    from pathlib import Path

    from nlsearch.search.results import write_results
    from nlsearch.search.space import load_space
    from nlsearch.search.study import JOURNAL, open_study

    space = load_space(args.file)
    out = Path(args.out) if args.out else Path("results") / space.name
    if args.storage is None and not (out / JOURNAL).exists():
        raise FileNotFoundError(f"--report: no study in {out} (no {JOURNAL}): run the search first, or give --out")
    study = open_study(space, out, args.storage, 1)
    frame = write_results(study, space, out, plots=True)
    console.print(f"rebuilt {safe(str(out))} from {len(frame)} trials: summary.md, plots, tables")
    _print_answer(space, out, console)
    return 0


def _print_answer(space, out, console: Console) -> None:
    from nlsearch.search.confirm import load_confirmation, verdict

    confirmation = load_confirmation(out)
    if confirmation is not None and not confirmation.empty:
        console.print(f"[bold]answer[/bold]: {safe(verdict(space, confirmation).text)}")


def _search(args: argparse.Namespace, console: Console) -> int:
    if args.report:
        return _report(args, console)
    from rich.live import Live
    from rich.text import Text

    from nlsearch.search.results import top_table
    from nlsearch.search.run import run_search
    from nlsearch.search.driver import SearchInterrupted

    live = Live(Text("starting…"), console=console, refresh_per_second=4, transient=False) if not args.quiet else None

    def status(line: str) -> None:
        if live is not None:
            live.update(Text(line))

    try:
        if live is not None:
            live.start()
        study, frame, out = run_search(args.file, out=args.out, workers=args.workers, address=args.address,
                                       storage=args.storage, trials=args.trials, device=args.device,
                                       log=lambda m: console.print(safe(m)), status=status,
                                       plots=not args.no_plots, confirm=not args.no_confirm)
    except SearchInterrupted:
        how, code = interrupt_exit()
        console.print(f"[yellow]interrupted[/yellow] ({how}): the study is consistent; run the same command to resume")
        return code
    finally:
        if live is not None:
            live.stop()
    from nlsearch.search.space import load_space
    space = load_space(args.file)
    if not len(frame) or not (frame.state == "COMPLETE").any():
        console.print(f"[red]error:[/red] {safe(_no_result(frame))}; no best.yaml was written")
        return 1
    console.print(rich_table(top_table(study, space, frame), f"search {space.name}: best trials"))
    console.print(f"results in {safe(str(out))}: trials.parquet, best.yaml, summary.md, plots"
                  f"{', pareto.parquet' if space.multi_objective else ''}"
                  f"{'' if args.no_confirm else ', confirmation.parquet'}")
    _print_answer(space, out, console)
    return 0


def _no_result(frame) -> str:
    """Why a search ended without a completed trial: every candidate broke the constraints, or how
    the trials ended."""
    if not len(frame):
        return "no trial ran"
    reasons = frame["reason"].fillna("") if "reason" in frame else None
    if reasons is not None and reasons.str.startswith("infeasible").all():
        return (f"no candidate satisfied the space's constraints: all {len(frame)} sampled were infeasible "
                f"(e.g. {reasons.iloc[0].removeprefix('infeasible (not trained): ')})")
    states = ", ".join(f"{n} {s.lower()}" for s, n in frame.state.value_counts().items())
    return f"no trial completed ({states})"


def _workers(text: str):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--workers must be a positive integer or 'auto', got {text!r}")
    return int(text)


def _trials(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--trials must be a positive integer, got {text!r}")
    return int(text)


def add_commands(sub, console_of) -> None:
    """Registers ``search`` and ``space show``; ``console_of()`` returns the CLI's console."""
    se = sub.add_parser("search", help="explore a search space with Optuna (trials in process or on Ray)")
    se.add_argument("file", help="a search space YAML (search_spaces/*.yaml)")
    se.add_argument("--workers", type=_workers, default="auto", help="trials at once (default auto: one per "
                    "resources.gpus_per_trial share of the GPUs, else one per resources.cpus_per_trial "
                    "cores); > 1 starts a local Ray, 1 runs in process")
    se.add_argument("--address", default=None, help="join a Ray cluster (e.g. auto) instead of a local one")
    se.add_argument("--storage", default=None, help="an Optuna storage URL (postgresql://…); default: a "
                    "journal file in the results folder")
    se.add_argument("--out", default=None, help="results folder (default results/<space name>)")
    se.add_argument("--trials", type=_trials, default=None, help="finished trials wanted (default: the space's)")
    se.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    se.add_argument("--no-plots", action="store_true")
    se.add_argument("--no-confirm", action="store_true", help="skip the confirmation stage (finalists retrained "
                    "with the space's confirm.seeds on the report eval set) and its verdict")
    se.add_argument("--report", action="store_true", help="rebuild summary.md, tables and plots from the study "
                    "in the results folder without training anything")
    se.add_argument("--quiet", action="store_true", help="no live progress line")
    se.set_defaults(func=lambda a: _search(a, console_of()))

    space = sub.add_parser("space", help="search spaces").add_subparsers(dest="what", required=True)
    show = space.add_parser("show", help="dimensions, conditions and one sampled config of a space")
    show.add_argument("file")
    show.add_argument("--seed", type=int, default=0, help="seed of the sampled example")
    show.set_defaults(func=lambda a: _space_show(a, console_of()))
