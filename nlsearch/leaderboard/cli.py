"""Commands ``submit``, ``leaderboard [show|render|index]`` and ``reproduce``, added to the ``nlsearch``
parser by ``add_commands(sub)``. Bad input raises ValueError / FileNotFoundError, which ``nlsearch``
prints as an error with exit code 2."""
from __future__ import annotations

import argparse
import math

from rich.console import Console

from nlsearch.display import rich_table, safe


def _console() -> Console:
    return Console(width=max(Console().width, 160))


def _submit(args: argparse.Namespace) -> int:
    from nlsearch.leaderboard.store import Store
    from nlsearch.leaderboard.submit import submit
    from nlsearch.leaderboard.table import display

    console = _console()
    entry, path = submit(args.config, args.name, author=args.author, protocol=args.protocol, budget=args.budget,
                         root=args.dir, runs_dir=args.runs, results=args.results, workers=args.workers,
                         address=args.address, log=lambda msg: console.print(safe(msg)))
    table = display(Store(args.dir).index(), entry.protocol, entry.budget)
    console.print(rich_table(table, f"leaderboard {entry.protocol}, budget {entry.budget}"))
    verified = f"; result file verified on seeds {list(entry.verification.seeds)}" if entry.verification else ""
    console.print(f"added {safe(entry.name)} ({entry.config_sha256[:12]}){verified}: {safe(str(path))}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from nlsearch.leaderboard.protocol import load_protocol
    from nlsearch.leaderboard.render import render
    from nlsearch.leaderboard.store import Store
    from nlsearch.leaderboard.table import display

    console = _console()
    store = Store(args.dir)
    if args.report is not None and args.action != "render":
        raise ValueError(f"--report is for 'render' only, not for {args.action!r}")
    if args.action == "verify":
        from nlsearch.leaderboard.audit import audit

        checked, problems = audit(args.dir, args.entries)
        if args.retrain:
            from nlsearch.leaderboard.audit import retrain

            protocol = load_protocol(args.protocol)
            wanted = set(args.entries)
            for entry in store.entries(protocol.ref):
                if not wanted or entry.id in wanted:
                    console.print(f"retraining {args.retrain} seed(s) of {safe(entry.id)}")
                    problems += retrain(entry, protocol, args.retrain, args.workers, args.address,
                                        log=lambda msg: console.print(safe(msg)))
        for problem in problems:
            console.print(f"[red]{safe(problem)}[/red]")
        console.print(f"verified {checked} entries: {len(problems) or 'no'} problem(s)")
        return 1 if problems else 0
    if args.entries or args.retrain:
        raise ValueError(f"ENTRY and --retrain are for 'verify' only, not for {args.action!r}")
    if args.action == "index":
        frame = store.rebuild_index()
        console.print(f"indexed {frame.id.nunique()} entries into {safe(str(store.index_path))}")
        _skipped(store, console)
        return 0
    if args.action == "render":
        readme, page = render(args.dir, load_protocol(args.protocol), args.report)
        console.print(f"wrote {safe(str(readme))}, {safe(str(page))} and {safe(str(store.root / 'plots'))}/")
        return 0
    protocol = load_protocol(args.protocol)
    track = protocol.load_budget(args.budget)
    table = display(store.index(), protocol.ref, track.ref, task=args.task, sort=args.sort)
    title = f"leaderboard {protocol.ref}, budget {track.ref} (mean ± std over seeds; ↑ higher / ↓ lower is better)"
    console.print(rich_table(table, title) if len(table) else f"no entries on {protocol.ref} {track.ref}")
    _skipped(store, console)
    return 0


def _skipped(store, console: Console) -> None:
    """Names every entry file the command had to leave out (store.readable)."""
    for problem in store.broken:
        console.print(f"[yellow]skipped[/yellow] {safe(problem)}")


def _reproduce(args: argparse.Namespace) -> int:
    from nlsearch.leaderboard.reproduce import reproduce, reproduce_runs

    console = _console()
    if args.dry_run:
        from nlsearch.bench.estimate import print_estimate

        print_estimate(console, reproduce_runs(args.budget, protocol=args.protocol, root=args.dir, runs_dir=args.runs,
                                               baselines=args.presets or None), "reproduce",
                       workers=None if args.address else args.workers)
        return 0
    report = reproduce(args.budget, args.workers, protocol=args.protocol, root=args.dir, runs_dir=args.runs,
                       out_dir=args.out, baselines=args.presets or None, address=args.address,
                       log=lambda msg: console.print(safe(msg)), hours=args.hours)
    console.print(safe(report.read_text()))
    console.print(f"saved {safe(str(report))}")
    return 0


def _common(p: argparse.ArgumentParser, budget_help: str) -> None:
    p.add_argument("--protocol", default=None, help="protocol file (default: leaderboard/protocol.yaml)")
    p.add_argument("--budget", default=None, help=budget_help)
    p.add_argument("--dir", default="leaderboard", help="the leaderboard folder (entries/, index.parquet)")


def _run_options(p: argparse.ArgumentParser, runs: str = "results/runs/leaderboard") -> None:
    p.add_argument("--runs", default=runs, help=f"where training runs go (reused if there and checked; "
                   f"default {runs})")
    p.add_argument("--workers", type=int, default=1, help="training runs in parallel processes")
    p.add_argument("--address", default=None, help="a Ray cluster address: run the training there")


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"--hours takes a positive number of hours, got {text!r}")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_commands(sub) -> None:
    """Adds ``submit``, ``leaderboard`` and ``reproduce`` to the ``nlsearch`` subcommands."""
    sm = sub.add_parser("submit", help="score a model config under the leaderboard protocol and add it")
    sm.add_argument("config", help="a model config YAML/JSON (a preset, a search's best.yaml, your own)")
    sm.add_argument("--name", required=True, help="the entry's name on the leaderboard")
    sm.add_argument("--author", default="anonymous")
    sm.add_argument("--results", default=None, help="a result file of claimed numbers: re-run seeds check it")
    _common(sm, "the budget track (default: the protocol's first)")
    _run_options(sm)
    sm.set_defaults(func=_submit)

    lb = sub.add_parser("leaderboard", help="print the leaderboard; 'render' writes README.md and index.html")
    lb.add_argument("action", nargs="?", default="show", choices=["show", "render", "index", "verify"],
                    help="show (default): print the table; render: README.md, index.html, plots; index: rebuild "
                         "index.parquet from the entries; verify: check offline that every entry's numbers "
                         "follow from its runs (records, digests, metrics)")
    lb.add_argument("entries", nargs="*", metavar="ENTRY", help="verify: these entry ids (default: every entry)")
    lb.add_argument("--task", default=None,
                    help="only this task's column, ranked by it (its name, or a part of exactly one name)")
    lb.add_argument("--sort", default=None, help="order by a column (params, state, depth, tokens/s, name, a task)")
    lb.add_argument("--retrain", type=_positive, default=0, metavar="N", help="verify: also train N measured seeds "
                    "of each entry again from nothing and flag numbers outside the protocol's tolerance")
    lb.add_argument("--workers", type=int, default=1, help="verify --retrain: training runs in parallel processes")
    lb.add_argument("--report", default=None, metavar="FILE", help="render: the reproduction's report.json whose "
                    "claims the page shows (default: results/reproduce/report.json beside the --dir folder, if any)")
    lb.add_argument("--address", default=None, help="verify --retrain: a Ray cluster address to train on")
    _common(lb, "the budget track to show (default: the protocol's first)")
    lb.set_defaults(func=_leaderboard)

    rp = sub.add_parser("reproduce", help="score the baselines under the protocol; results/reproduce/report.md")
    rp.add_argument("--presets", nargs="+", default=[], metavar="NAME", help="baselines (default: all of them)")
    rp.add_argument("--out", default="results/reproduce", help="OUT/report.md and OUT/report.json")
    rp.add_argument("--dry-run", action="store_true", help="print the runs it would do (how many are finished) "
                    "and their estimated core-hours (from results/bench/models-cpu.parquet); train nothing")
    rp.add_argument("--hours", type=_hours, default=None, metavar="H",
                    help="start no run that would end more than H hours from now by its estimate (the dry "
                    "run's, with 25%% to spare); the command then ends with whole runs only, and the next "
                    "call goes on (a batch job's wall-time limit, a sitting)")
    _common(rp, "cpu or gpu (default: the protocol's first track)")
    _run_options(rp, "results/reproduce/runs")
    rp.set_defaults(func=_reproduce)
