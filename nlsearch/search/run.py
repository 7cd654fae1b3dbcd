"""``run_search``: one call from a space file to ``results/<study>/``, with a live progress line."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import optuna
import pandas as pd
from optuna.trial import TrialState

from nlsearch.search.driver import Driver, auto_workers, default_executor
from nlsearch.search.executors import Executor
from nlsearch.search.results import write_results
from nlsearch.search.space import SearchSpace, load_space
from nlsearch.search.study import counts, finished


def _best_text(study: optuna.Study, space: SearchSpace) -> str:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return "best —"
    sign = 1 if space.objectives[0].direction == "maximize" else -1
    best = max(done, key=lambda t: sign * t.values[0])
    return f"best {space.objectives[0].metric} {best.values[0]:.4g} (#{best.number})"


def progress_line(driver: Driver, study: optuna.Study) -> str:
    """``trials 5/16 · running 2 · pruned 1 · failed 0 · best … · ETA 6m``."""
    trials = study.get_trials(deepcopy=False)
    done = finished(study)
    pruned = sum(1 for t in trials if t.state == TrialState.PRUNED)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL and counts(t))   # not re-queued, not surplus
    line = (f"trials {done}/{driver.trials} · running {driver.state.running} · pruned {pruned} · "
            f"failed {failed} · {_best_text(study, driver.space)}")
    durations = driver.state.durations
    if durations:
        left = max(driver.trials - done, 0)
        eta = sum(durations) / len(durations) * math.ceil(left / max(driver.executor.slots, 1))
        line += f" · ETA {eta / 60:.1f} min"
    return line


def run_search(space: Union[str, Path, SearchSpace], out: Optional[Union[str, Path]] = None,
               workers: Union[int, str] = 1,
               address: Optional[str] = None, storage: Optional[str] = None, trials: Optional[int] = None,
               executor: Optional[Executor] = None, device: str = "auto", tasks_dir: Optional[Path] = None,
               log: Callable[[str], Any] = print, status: Optional[Callable[[str], Any]] = None,
               plots: bool = True, confirm: bool = True) -> Tuple[optuna.Study, pd.DataFrame, Path]:
    """Runs (or resumes) the search of ``space``; returns (study, trials table, results folder).

    ``out``: the results folder (default ``results/<space name>``), which also holds the journal
    storage and the trial runs. ``workers`` > 1 or an ``address`` runs trials on Ray; ``"auto"``: as
    many as the machine holds (:func:`~nlsearch.search.driver.auto_workers`). ``status``
    receives the progress line after every change. ``confirm``: run the confirmation stage after the
    search (``nlsearch.search.confirm``). Every input is validated before a trial starts.
    """
    space = space if isinstance(space, SearchSpace) else load_space(space)
    if workers == "auto":
        workers = auto_workers(space, device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer or 'auto'")
    out = Path(out) if out is not None else Path("results") / space.name
    started = time.monotonic()
    last = [0.0]

    def changed(driver: Driver, study: optuna.Study) -> None:
        if status is not None:
            status(progress_line(driver, study))
        if time.monotonic() - last[0] > 2.0 or driver.state.running == 0:
            write_results(study, space, out)
            last[0] = time.monotonic()

    driver = Driver(space, out, None, storage=storage, trials=trials, device=device, tasks_dir=tasks_dir,
                    log=log, on_change=changed, confirm=confirm)   # validates everything before Ray starts
    driver.executor = executor or default_executor(workers, address, space, device)
    study = driver.run()
    frame = write_results(study, space, out, plots=plots)
    log(f"search {space.name}: {len(frame)} trials in {time.monotonic() - started:.0f} s on "
        f"{driver.executor.describe()}")
    return study, frame, out
