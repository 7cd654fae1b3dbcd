"""``nlsearch leaderboard verify [ENTRY...]``: offline, check that every entry's numbers follow from its
runs. For each measured seed: the run folder the entry names holds a record of the same config, task
and budget (by sha256) and precision, its metrics files match the digests in that record and in the
entry, and every number the entry shows is the record's. Cheap (no training); ``.ci/run`` runs it on
every entry. What it cannot show, a retrained seed can: ``--retrain N`` (:func:`retrain`) trains N
measured seeds of each entry again, from nothing, into a scratch folder, and flags every number
outside the protocol's tolerance. See PROTOCOL.md, "Trust".
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import tempfile

from nlsearch.leaderboard.entry import Entry
from nlsearch.leaderboard.protocol import Protocol
from nlsearch.leaderboard.store import Store


def audit_entry(entry: Entry, base: Path = Path(".")) -> List[str]:
    """The problems found in ``entry`` (empty: its numbers follow from its runs). Run folders are
    resolved against ``base`` when relative."""
    from nlsearch.train.record import check_files, read_record

    problems = []
    for ref, task in entry.tasks.items():
        for seed in task.seeds:
            if seed.source != "measured" or seed.status != "completed":
                continue
            where = f"{entry.id}: {ref} seed {seed.seed}"
            if seed.run is None:
                problems.append(f"{where}: measured but names no run")
                continue
            run_dir = Path(seed.run.run_dir)
            run_dir = run_dir if run_dir.is_absolute() else base / run_dir
            try:
                record = read_record(run_dir)
                check_files(run_dir, record)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"{where}: {' '.join(str(err).split())}")
                continue
            mine = {"config_sha256": seed.run.config_sha256, "task_sha256": seed.run.task_sha256,
                    "budget_sha256": seed.run.budget_sha256, "precision": seed.run.precision}
            differ = [k for k, v in mine.items() if getattr(record, k) != v]
            if seed.run.files and seed.run.files != record.files:
                differ.append("files")
            differ += [f"metric {k}" for k, v in seed.metrics.items() if record.metrics.get(k, "missing") != v]
            if differ:
                problems.append(f"{where}: the entry and its run's record differ in {', '.join(differ)}")
    return problems


def audit(root: Path, ids: Sequence[str] = (), base: Optional[Path] = None) -> Tuple[int, List[str]]:
    """(entries checked, problems) over the entries of the leaderboard at ``root`` (or those ``ids``)."""
    store = Store(root)
    readable = store.readable()
    problems: List[str] = list(store.broken)               # a file that is no entry is a problem here
    if ids:
        wanted = set(ids)
        readable = [(p, e) for p, e in readable if e.id in wanted or p.stem in wanted]
        missing = sorted(wanted - {e.id for _, e in readable} - {p.stem for p, _ in readable})
        if missing:
            raise ValueError(f"no leaderboard entry {missing[0]!r} under {store.root}")
        problems = []
    for _, entry in readable:
        problems += audit_entry(entry, base if base is not None else Path("."))
    return len(readable), problems


def retrain(entry: Entry, protocol: Protocol, n: int, workers: int = 1, address: Optional[str] = None,
            log=None) -> List[str]:
    """Trains the first ``n`` measured seeds of ``entry`` again (every task, at the entry's lr factor,
    in a scratch runs folder so nothing is reused) and returns a problem for every metric that
    differs from the entry's by more than ``protocol.tolerance``."""
    from nlsearch.leaderboard.scoring import RunError, score_model

    if entry.protocol != protocol.ref:
        raise ValueError(f"{entry.id}: scored under {entry.protocol}, not {protocol.ref}: give --protocol of it")
    measured = sorted({s.seed for t in entry.tasks.values() for s in t.seeds
                       if s.source == "measured" and s.status == "completed"})
    seeds = measured[:n]
    if not seeds:
        return [f"{entry.id}: no measured seed to retrain"]
    factors = {ref: t.lr_factor for ref, t in entry.tasks.items()}
    with tempfile.TemporaryDirectory(prefix="nlsearch-retrain-") as scratch:
        try:
            again = score_model(dict(entry.config), protocol, protocol.load_budget(entry.budget), Path(scratch),
                                seeds=seeds, lr_factors=factors, workers=workers, address=address, log=log)
        except RunError as err:                   # nothing to compare: this entry's problem, the others go on
            return [f"{entry.id}: could not retrain: {err.runs}"]
    problems = []
    for ref, task in entry.tasks.items():
        fresh = {s.seed: s for s in again[ref].seeds}
        for seed in task.seeds:
            if seed.seed not in seeds or seed.status != "completed":
                continue
            got = fresh.get(seed.seed)
            if got is None or got.status != "completed":
                problems.append(f"{entry.id}: {ref} seed {seed.seed}: the retrained run "
                                f"{got.status if got else 'is missing'}")
                continue
            for name, claimed in seed.metrics.items():
                measured_value = got.metrics.get(name)
                if claimed is None or measured_value is None:
                    continue
                if not protocol.tolerance.allows(claimed, measured_value):
                    problems.append(f"{entry.id}: {ref} seed {seed.seed}: {name} is {claimed:.6g} in the entry, "
                                    f"{measured_value:.6g} retrained (tolerance {protocol.tolerance.abs} + "
                                    f"{protocol.tolerance.rel} x |measured|)")
    return problems
