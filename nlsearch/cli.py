"""The ``nlsearch`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console
from rich.table import Table

from nlsearch.display import rich_table, safe
from nlsearch.runtime import interrupt_exit, tune_process, watch_interrupts

console = Console()


def _bench_ops(args: argparse.Namespace) -> int:
    from nlsearch.bench.ops import OpsBenchConfig, floor_checks, pick_device, run_ops_bench
    from nlsearch.bench.report import report

    cfg = OpsBenchConfig(lengths=args.lengths, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                         rules=args.rules, repeats=args.repeats, max_seconds=args.max_seconds,
                         device=args.device)
    device = pick_device(cfg.device)
    df = run_ops_bench(cfg, log=console.print)
    report(console, df, floor_checks(df), ["rule", "impl", "T", "seconds", "tokens_per_s",
                                           "saved_bytes_per_token", "peak_bytes"],
           f"bench ops: forward+backward, B={cfg.batch} H={cfg.heads} D={cfg.head_dim}", Path(args.out),
           f"ops-{device.type}")
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from nlsearch.bench.models import (ModelsBenchConfig, check_setting, model_floor_checks, run_models_bench,
                                       update_rows)
    from nlsearch.bench.ops import pick_device
    from nlsearch.bench.report import report

    cfg = ModelsBenchConfig(presets=args.presets, lengths=args.lengths, batch=args.batch, d_model=args.d_model,
                            n_layers=args.n_layers, repeats=args.repeats, device=args.device,
                            compile=args.compile)
    device = pick_device(cfg.device)
    stem = f"models-compile-{device.type}" if cfg.compile else f"models-{device.type}"
    table = Path(args.out) / f"{stem}.parquet"
    if args.update and not cfg.presets:
        raise ValueError("--update replaces the rows of the presets named by --presets: name them")
    old = pd.read_parquet(table) if args.update and table.is_file() else None
    if old is not None:                            # refuse before timing anything
        check_setting(old, {"B": [str(cfg.batch)], "d_model": [str(cfg.d_model)], "n_layers": [str(cfg.n_layers)],
                            "device": [device.type]})
    df = run_models_bench(cfg, log=console.print)
    if old is not None:
        df = update_rows(old, df)
    shown = ["preset", "T", "seconds", "tokens_per_s", "saved_bytes_per_token", "peak_bytes"]
    if cfg.compile:
        shown[3:3] = ["compiled_seconds", "compile_seconds"]
    report(console, df, model_floor_checks(df), shown,
           f"bench models: training step, B={cfg.batch} d_model={cfg.d_model} layers={cfg.n_layers}"
           + (", eager and compiled layer steps" if cfg.compile else ""),
           Path(args.out), stem)
    return 0


def _bench_search(args: argparse.Namespace) -> int:
    from nlsearch.bench.report import report
    from nlsearch.bench.search import run_search_bench, search_floor_checks

    df = run_search_bench(args.space, minutes=args.minutes, workers=args.workers, budget=args.budget,
                          trials=args.trials, seeds=args.seeds, log=console.print)
    report(console, df, search_floor_checks(df), ["arm", "trial_span_s", "finished", "complete", "pruned", "failed",
                                                  "trials_per_hour", "best", "pruner_agreement", "would_prune"],
           f"bench search: {df.space.iloc[0]}, scaling on {args.trials} trials, samplers {args.minutes:g} min each "
           f"over sampler seeds {list(args.seeds)}", Path(args.out), "search-cpu")
    return 0


def _describe(args: argparse.Namespace) -> int:
    import pandas as pd

    from nlsearch.models import load_model_config
    from nlsearch.models.describe import describe

    info = describe(load_model_config(args.model), seq_len=args.seq_len)
    console.print(f"[bold]{safe(info['name'])}[/bold]  sha256 {info['config_sha256']}")
    console.print(f"parameters {info['params']:,} ({info['params_non_embedding']:,} without the embedding)  "
                  f"state {info['state_size']:,} numbers/sequence at T={info['seq_len']}  "
                  f"~{info['flops_per_token'] / 1e6:.2f} MFLOP/token (forward)")
    levels = pd.DataFrame(info["levels"])[["name", "frequency", "objective", "memory", "what"]]
    console.print(rich_table(levels, f"nesting profile, fastest first: depth {info['nesting_depth']}"))
    return 0


def _lengths(lengths) -> str:
    return " ".join(f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths)


def _tasks_list(args: argparse.Namespace) -> int:
    from nlsearch.budgets import task_kind
    from nlsearch.tasks import list_tasks, load_task

    tasks_dir = Path(args.tasks_dir) if args.tasks_dir else None
    table = Table(title="tasks (↑ higher is better, ↓ lower is better)")
    for col in ("task", "kind", "phases", "metrics", "train", "eval"):
        table.add_column(col, no_wrap=True)
    for ref in list_tasks(tasks_dir):
        task = load_task(ref, tasks_dir)
        metrics = "\n".join(f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in task.spec.metrics)
        table.add_row(ref, task_kind(task), str(len(task.phase_names())), metrics,
                      _lengths(task.spec.lengths.train), _lengths(task.spec.lengths.eval))
    Console(width=max(console.width, 120)).print(table)
    return 0


def _result_table(record, title: str) -> Table:
    import pandas as pd

    names = [n for n in record.metrics if "[" not in n]
    df = pd.DataFrame({"metric": names, "value": [record.metrics[n] for n in names],
                       "better": ["higher" if record.higher_is_better[n] else "lower" for n in names]})
    return rich_table(df, title, floatfmt="{:.4f}")


def _print_record(record, where: Path) -> None:
    console.print(_result_table(record, f"{record.model or 'model'} on {record.task}, budget {record.budget}, "
                                        f"seed {record.seed}"))
    speed = f"{record.tokens_per_s:,.0f} tokens/s" if record.tokens_per_s else "tokens/s n/a"
    console.print(f"parameters {record.params:,}  state {record.state_size:,} numbers/sequence at "
                  f"T={record.state_size_length}  {speed}  wall {record.wall_time_s:.1f} s  "
                  f"{record.hardware}  commit {record.git_commit}")
    console.print(f"saved {safe(str(where))}")


def _train(args: argparse.Namespace) -> int:
    from nlsearch.train import NonFiniteLossError, default_run_dir, plan_run, train

    plan = plan_run(args.model, args.task, args.budget, args.seed, args.device, args.threads)
    run_dir = default_run_dir(args.out, plan)
    try:
        result = train(plan.cfg, plan.task, plan.budget, args.seed, run_dir=run_dir, resume=args.resume,
                       device=args.device, threads=args.threads, progress=not args.quiet,
                       log=lambda msg: console.print(safe(msg)))
    except NonFiniteLossError as err:
        console.print(f"[red]diverged:[/red] {safe(str(err))}; checkpoints, if any, are in {safe(str(run_dir))}")
        return 1
    _print_record(result.record, run_dir / "record.json")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nlsearch.train import evaluate_checkpoint

    record, _, out = evaluate_checkpoint(args.checkpoint, task=args.task, budget=args.budget, device=args.device)
    _print_record(record, out / "record.json")
    return 0


def _add_run_commands(sub) -> None:
    tasks = sub.add_parser("tasks", help="task specs").add_subparsers(dest="what", required=True)
    listing = tasks.add_parser("list", help="every task spec: name@version, kind, metrics, lengths")
    listing.add_argument("--tasks-dir", default=None, help="folder of task YAML files (default: tasks/)")
    listing.set_defaults(func=_tasks_list)

    tr = sub.add_parser("train", help="train a model on a task under a budget; print and save its record")
    tr.add_argument("--model", required=True, help="a preset name or a model YAML file")
    tr.add_argument("--task", required=True, help="name, name@version or a task YAML file")
    tr.add_argument("--budget", default="smoke", help="smoke, cpu, gpu or a budget YAML file")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default="results/runs",
                    help="runs go to OUT/<task>@<v>/<model>-<sha12>/<budget>@<v>-seed<seed>")
    tr.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.add_argument("--threads", type=int, default=None, help="CPU threads (default: the budget's)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="re-evaluate a saved model; print and save its record")
    ev.add_argument("--checkpoint", required=True, help="a run directory (or one of its checkpoint folders)")
    ev.add_argument("--task", default=None, help="another task (default: the run's)")
    ev.add_argument("--budget", default=None, help="another budget (default: the run's)")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.set_defaults(func=_eval)


def _run_suite(args: argparse.Namespace) -> int:
    from nlsearch.train.suite import DEFAULT_TASKS, run_suite, suite_pivot

    out = Path(args.out)
    if args.dry_run:
        from nlsearch.bench.estimate import print_estimate
        from nlsearch.train.suite import suite_runs

        print_estimate(console, suite_runs(args.presets or None, args.tasks or list(DEFAULT_TASKS), args.budget,
                                           args.seeds, out, device=args.device), "run-suite", workers=1)
        return 0
    frame = run_suite(args.presets or None, args.tasks or list(DEFAULT_TASKS), args.budget, args.seeds, out,
                      log=lambda msg: console.print(safe(msg)), device=args.device, progress=not args.quiet)
    presets = list(dict.fromkeys(p for p in frame.preset if p != "bigram"))
    pivot = suite_pivot(frame, presets, list(dict.fromkeys(frame.task)))
    console.print(rich_table(pivot, f"suite: budget {frame.budget.iloc[0]}, seeds {args.seeds} "
                                    f"(headline metric, mean over seeds; ↑ higher / ↓ lower is better)"))
    failed = int(frame.status.str.startswith("failed").sum())
    if failed:
        console.print(f"[yellow]{failed} run(s) failed[/yellow]: see the status column")
    console.print(f"saved {safe(str(out / 'suite.parquet'))}, {safe(str(out / 'suite.md'))}, "
                  f"runs in {safe(str(out / 'runs'))}")
    return 0


def _add_suite_command(sub) -> None:
    su = sub.add_parser("run-suite", help="train presets x tasks x seeds under one budget; one comparison table")
    su.add_argument("--presets", nargs="+", default=[], metavar="NAME", help="presets or model YAML files "
                    "(default: every preset)")
    su.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="task names, name@version or YAML "
                    "files (default: recall_small recall_small_overwrite lm longctx_needle "
                    "continual_recall, the tasks the cpu budget can learn)")
    su.add_argument("--budget", default="cpu", help="smoke, cpu, gpu or a budget YAML file")
    su.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED")
    su.add_argument("--out", default="results/suite", help="OUT/suite.parquet, OUT/suite.md, OUT/runs/...")
    su.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    su.add_argument("--quiet", action="store_true", help="no progress bars")
    su.add_argument("--dry-run", action="store_true", help="print the runs it would do (how many are finished) "
                    "and their estimated core-hours (from results/bench/models-cpu.parquet); train nothing")
    su.set_defaults(func=_run_suite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlsearch", description="Nested Learning architecture search and benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="speed and memory benchmarks").add_subparsers(dest="what", required=True)
    ops = bench.add_parser("ops", help="forward+backward time and memory of every memory rule vs SDPA")
    from nlsearch.bench.ops import DEFAULT_T, RECURRENT
    ops.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_T), metavar="T")
    ops.add_argument("--batch", type=int, default=8)
    ops.add_argument("--heads", type=int, default=4)
    ops.add_argument("--head-dim", type=int, default=32)
    ops.add_argument("--rules", nargs="+", default=list(RECURRENT), choices=list(RECURRENT))
    ops.add_argument("--repeats", type=int, default=5)
    ops.add_argument("--max-seconds", type=float, default=30.0,
                     help="skip a measurement predicted to take longer (naive forms at long T)")
    ops.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ops.add_argument("--out", default="results/bench")
    ops.set_defaults(func=_bench_ops)
    models = bench.add_parser("models", help="training tokens/s and memory of every model preset")
    models.add_argument("--presets", nargs="+", default=[], metavar="NAME", help="default: every preset")
    models.add_argument("--lengths", type=int, nargs="+", default=[512, 4096], metavar="T")
    models.add_argument("--batch", type=int, default=8)
    models.add_argument("--d-model", type=int, default=128)
    models.add_argument("--n-layers", type=int, default=2)
    models.add_argument("--repeats", type=int, default=3)
    models.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    models.add_argument("--compile", action="store_true",
                        help="also time each preset with its layers' steps compiled, and the compile (writes "
                             "models-compile-<device>.*, the table runs choose compiled steps from)")
    models.add_argument("--update", action="store_true",
                        help="keep the saved table's other presets and replace only those of --presets (each "
                             "row keeps the run that timed it; floors compare rows of one run only)")
    models.add_argument("--out", default="results/bench")
    models.set_defaults(func=_bench_models)
    from nlsearch.bench.search import DEFAULT_SPACE
    srch = bench.add_parser("search", help="trials/hour with 1 vs N workers; the space's sampler and pruner vs "
                                           "random at equal time, over sampler seeds")
    srch.add_argument("--space", default=DEFAULT_SPACE)
    srch.add_argument("--minutes", type=float, default=3.0, help="asking time per sampler arm")
    srch.add_argument("--trials", type=int, default=12, help="trials of each scaling arm (same candidates; 0: skip)")
    srch.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds of the timed arms")
    srch.add_argument("--workers", type=int, default=2)
    srch.add_argument("--budget", default=None, help="trial budget (default: bench_budget(): 120 LM steps, "
                                                      "60 MQAR steps, at T=128)")
    srch.add_argument("--out", default="results/bench")
    srch.set_defaults(func=_bench_search)

    desc = sub.add_parser("describe", help="parameters, state size, FLOPs/token and the nesting profile")
    desc.add_argument("model", help="a preset name (nlsearch/models/presets/) or a model YAML file")
    desc.add_argument("--seq-len", type=int, default=512, help="length at which state and FLOPs are counted")
    desc.set_defaults(func=_describe)
    _add_run_commands(sub)
    _add_suite_command(sub)
    from nlsearch.search.cli import add_commands as add_search_commands
    add_search_commands(sub, lambda: console)
    from nlsearch.leaderboard.cli import add_commands as add_leaderboard_commands
    add_leaderboard_commands(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command takes its flags spelled out: ``--worker 2`` is an error, not ``--workers 2``."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def main(argv: Optional[List[str]] = None) -> int:
    global console
    console = Console()                       # created per call: honours COLUMNS and redirection
    args = build_parser().parse_args(argv)
    tune_process()
    restore = watch_interrupts()
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        console.print(f"[red]error:[/red] {safe(str(message))}")
        return getattr(err, "exit_code", 2)     # 2: bad input; an error may name its own (runs that raised: 1)
    except KeyboardInterrupt:                 # every command: what each keeps is its own
        how, code = interrupt_exit()
        console.print(f"[yellow]interrupted[/yellow] ({how})")
        return code
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
