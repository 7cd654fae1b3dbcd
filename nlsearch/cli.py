"""The ``nlsearch`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console
from rich.table import Table

console = Console()


def _table(df, title: str, floatfmt: str = "{:.3g}") -> Table:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col))
    for _, row in df.iterrows():
        table.add_row(*[floatfmt.format(x) if isinstance(x, float) else str(x) for x in row])
    return table


def _bench_ops(args: argparse.Namespace) -> int:
    from nlsearch.bench.ops import OpsBenchConfig, floor_checks, pick_device, run_ops_bench
    from nlsearch.io import markdown_table, write_parquet, write_text

    cfg = OpsBenchConfig(lengths=args.lengths, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                         rules=args.rules, repeats=args.repeats, max_seconds=args.max_seconds,
                         device=args.device)
    device = pick_device(cfg.device)
    df = run_ops_bench(cfg, log=console.print)
    floors = floor_checks(df)
    shown = df[["rule", "impl", "T", "seconds", "tokens_per_s", "saved_bytes_per_token", "peak_bytes"]]
    console.print(_table(shown, f"memory ops, forward+backward, B={cfg.batch} H={cfg.heads} D={cfg.head_dim}"))
    console.print(_table(floors, "floors (ratios from this run)"))
    out = Path(args.out)
    table_path = write_parquet(df, out / f"ops-{device.type}.parquet")
    md = "\n\n".join([f"# nlsearch bench ops ({df['hardware'].iloc[0]}, torch {df['torch'].iloc[0]}, "
                      f"commit {df['git_commit'].iloc[0]})", markdown_table(shown),
                      "## Floors", markdown_table(floors)])
    write_text(md + "\n", out / f"ops-{device.type}.md")
    console.print(f"saved {table_path} and {out / f'ops-{device.type}.md'}")
    return 0


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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
