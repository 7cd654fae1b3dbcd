"""Entries on disk and their Parquet index.

Layout of a leaderboard folder (default ``leaderboard/``):

- ``entries/<protocol>@<v>/<budget>@<v>/<sha12>-<name>.json``: one file per entry, append-only;
- ``index.parquet``: one row per (entry, task), derived from the entries (``INDEX_COLUMNS``);
  rebuilt after every addition and whenever the set of entry files no longer matches it (after a git
  merge, for example). Being derived, it is not committed (``.gitignore``): nothing to merge by hand;
- ``rejected/<protocol>@<v>/<budget>@<v>/<sha12>-<time>.json``: one file per result file that failed
  verification (config hash, the file's sha256, the re-run seeds). Claims for that config are refused
  from then on (it can still be submitted without them, every seed measured): otherwise a rejected
  submitter could try again until the randomly drawn verification seeds miss the invented ones;
- ``.lock``: the lock every writer holds.

Concurrency: ``add`` takes an exclusive OS lock on ``.lock`` (``filelock``), re-checks for a duplicate under
the lock, writes the entry to a temporary file and renames it into place, then rebuilds the index the
same way. Two processes adding at once are serialised; a reader sees the old index or the new one,
never half of one; a crash leaves at most a stray temporary file, which readers ignore.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
from filelock import FileLock
from pydantic import ValidationError

from nlsearch.io import write_parquet, write_text
from nlsearch.leaderboard.entry import Entry

DEFAULT_ROOT = Path("leaderboard")
INDEX_COLUMNS = (
    "id", "name", "author", "kind", "protocol", "budget", "config_sha256", "params", "state_size",
    "nesting_depth", "tokens_per_s", "created", "git_commit", "task", "task_kind", "metric", "higher_is_better",
    "mean", "std", "n", "seeds", "lr_factor", "per_length", "extra", "path", "derived_by")
DERIVED_BY = 4
"""How the index's derived columns are computed from the entries: raised whenever that changes (2: an
entry's tokens/s is the median over its runs, not the mean; 3: wall clock for every entry again, after
a few hours in which CPU-time figures were preferred where runs had them; 4: ``seeds``, the seeds a
task ran, beside ``n``, those that completed), so an index an older nlsearch wrote is rebuilt rather
than read."""


class LeaderboardError(ValueError):
    """A submission the leaderboard refuses; the leaderboard is unchanged."""


class DuplicateEntryError(LeaderboardError):
    def __init__(self, existing: Path, what: str):
        super().__init__(f"{what} is already on the leaderboard: {existing}")
        self.existing = existing


class Store:
    def __init__(self, root: Union[str, Path] = DEFAULT_ROOT):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"
        self.index_path = self.root / "index.parquet"
        self.lock_path = self.root / ".lock"
        self.broken: List[str] = []                 # entry files the last read could not use (path: why)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock over the whole leaderboard folder (blocks until it is free)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path):
            yield

    def rejection(self, config_sha256: str, protocol: str, budget: str) -> Optional[Path]:
        """The record of claimed results for this config that failed verification, if one exists."""
        folder = self.root / "rejected" / protocol / budget
        return next(iter(sorted(folder.glob(f"{config_sha256[:12]}-*.json"))), None) if folder.is_dir() else None

    def add_rejection(self, config_sha256: str, protocol: str, budget: str, results_sha256: str,
                      seeds: Sequence[int], created: str) -> Path:
        """Records (under the lock, atomically) that claimed results for this config did not reproduce."""
        stamp = created.replace(":", "").replace("+", "Z")
        record = {"config_sha256": config_sha256, "protocol": protocol, "budget": budget,
                  "results_sha256": results_sha256, "verified_seeds": list(seeds), "created": created}
        with self.lock():
            path = self.root / "rejected" / protocol / budget / f"{config_sha256[:12]}-{stamp}.json"
            return write_text(json.dumps(record, indent=1) + "\n", path)

    def path_of(self, entry: Entry) -> Path:
        return self.entries_dir / f"{entry.id}.json"

    def entry_files(self) -> List[Path]:
        return sorted(p for p in self.entries_dir.rglob("*.json") if not p.name.startswith("."))

    def readable(self) -> List[Tuple[Path, Entry]]:
        """(path, entry) of every entry file that reads as an entry; a file that does not (truncated,
        binary, edited into something else) is left out and listed in ``self.broken`` with the reason,
        so one bad file never blocks the table, a render or a submission."""
        good, self.broken = [], []
        for path in self.entry_files():
            try:
                good.append((path, read_entry(path)))
            except LeaderboardError as err:
                self.broken.append(str(err))
        return good

    def entries(self, protocol: Optional[str] = None, budget: Optional[str] = None) -> List[Entry]:
        return [e for _, e in self.readable()
                if (protocol is None or e.protocol == protocol) and (budget is None or e.budget == budget)]

    def find(self, config_sha256: str, protocol: str, budget: str) -> Optional[Path]:
        """The file of the entry with this key, if one exists."""
        for path, entry in self.readable():
            if entry.key() == (config_sha256, protocol, budget):
                return path
        return None

    def _check_new(self, entry: Entry, protocol_sha256: str) -> None:
        for path, other in self.readable():
            if other.key() == entry.key():
                raise DuplicateEntryError(path, f"config {entry.config_sha256[:12]} under protocol "
                                                f"{entry.protocol}, budget {entry.budget}")
            same_track = (other.protocol, other.budget) == (entry.protocol, entry.budget)
            if same_track and other.name == entry.name:
                raise LeaderboardError(f"the name {entry.name!r} is taken on {entry.protocol} {entry.budget} by "
                                       f"{path}; choose another --name")
            if other.protocol == entry.protocol and other.protocol_sha256 != protocol_sha256:
                raise LeaderboardError(f"protocol {entry.protocol} differs from the one {path} was scored under "
                                       f"(sha256 {other.protocol_sha256[:12]} vs {protocol_sha256[:12]}): a "
                                       f"changed protocol needs a new version")

    def add(self, entry: Entry) -> Path:
        """Writes ``entry`` and re-indexes, under the lock; raises DuplicateEntryError (pointing at the
        existing file) or LeaderboardError and leaves everything as it was."""
        with self.lock():
            self._check_new(entry, entry.protocol_sha256)
            path = write_text(entry.model_dump_json(indent=1) + "\n", self.path_of(entry))
            self._write_index()
        return path

    def _write_index(self) -> pd.DataFrame:
        frame = index_frame([(e, p) for p, e in self.readable()], self.root)
        write_parquet(frame, self.index_path)
        return frame

    def rebuild_index(self) -> pd.DataFrame:
        with self.lock():
            return self._write_index()

    def index(self) -> pd.DataFrame:
        """The index, rebuilt first when it is missing, does not list exactly the entry files, or was
        derived by other rules (:data:`DERIVED_BY`)."""
        files = {str(p.relative_to(self.root)) for p, _ in self.readable()}
        if self.index_path.is_file():
            try:
                frame = pd.read_parquet(self.index_path)
            except (OSError, ValueError):                # a corrupt derived index: rebuilt from the entries
                frame = None
            if (frame is not None and "path" in frame and set(frame.path) == files
                    and "derived_by" in frame and set(frame.derived_by) <= {DERIVED_BY}):
                return frame
        if not files and not self.root.exists():
            return index_frame([], self.root)
        return self.rebuild_index()


def read_entry(path: Path) -> Entry:
    try:
        return Entry.model_validate_json(Path(path).read_bytes())
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise LeaderboardError(f"{path}: not a valid leaderboard entry ({err.error_count()} problem(s); first: "
                               f"{where + ': ' if where else ''}{first.get('msg', err)})") from None


def _nan(x: Optional[float]) -> float:
    return math.nan if x is None else float(x)


def index_rows(entry: Entry, rel_path: str) -> List[dict]:
    """One row per task of ``entry``: aggregated ranked metric, mean per length, other metrics' means."""
    git = sorted({s.run.git_commit for t in entry.tasks.values() for s in t.seeds if s.run is not None})
    rows = []
    for ref, result in entry.tasks.items():
        mean, std, n = result.aggregate()
        extra = {name: result.aggregate(name)[0] for name in result.directions if "@" not in name}
        rows.append({
            "id": entry.id, "name": entry.name, "author": entry.author, "kind": entry.kind,
            "protocol": entry.protocol, "budget": entry.budget, "config_sha256": entry.config_sha256,
            "params": entry.params, "state_size": entry.state_size, "nesting_depth": entry.nesting_depth,
            "tokens_per_s": entry.tokens_per_s(), "created": entry.created, "git_commit": ",".join(git),
            "task": ref, "task_kind": result.kind, "metric": result.metric,
            "higher_is_better": result.higher_is_better, "mean": mean, "std": std, "n": n,
            "seeds": len(result.seeds), "lr_factor": result.lr_factor,
            "per_length": json.dumps({str(k): v for k, v in result.per_length().items()}),
            "extra": json.dumps(extra), "path": rel_path, "derived_by": DERIVED_BY})
    return rows


def index_frame(entries: Sequence, root: Path) -> pd.DataFrame:
    rows = [row for entry, path in entries for row in index_rows(entry, str(Path(path).relative_to(root)))]
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    for col in ("params", "state_size", "nesting_depth", "n", "seeds"):
        frame[col] = frame[col].astype("int64")
    for col in ("tokens_per_s", "mean", "std", "lr_factor"):
        frame[col] = frame[col].astype("float64")
    frame["higher_is_better"] = frame["higher_is_better"].astype(bool)
    return frame
