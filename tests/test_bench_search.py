"""``bench search``'s arithmetic, on hand-made trials and arms: the median pruner replayed on full
learning curves (which trials it would stop, and whether they ended in the worse half), and the floor
checks over sampler seeds."""
from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest

from nlsearch.bench.search import pruner_agreement, search_floor_checks
from nlsearch.search.space import load_space


def _trial(number, curve, final):
    trial = optuna.trial.create_trial(value=final, intermediate_values=dict(curve))
    trial.number = number
    return trial


def test_the_median_pruner_replayed_on_full_curves():
    """Lower is better; warm-up 30, 2 start-up trials. Trials 0-1 are never judged. Trial 2 is worse
    than the median of 0-1 at step 30 (stopped) and ends worse than the median final (agrees); trial 3
    is better at both steps (kept); trial 4 is worse at 60 only (stopped) but ends best (disagrees);
    step 0 is inside the warm-up and never judged."""
    space = load_space("search_spaces/sampler_bench.yaml")
    space = space.model_copy(update={"pruner": space.pruner.model_copy(update={"n_startup_trials": 2,
                                                                                "n_warmup_steps": 30})})
    trials = [_trial(0, {0: 9.0, 30: 5.0, 60: 4.0}, 4.0),
              _trial(1, {0: 1.0, 30: 6.0, 60: 5.0}, 5.0),
              _trial(2, {0: 1.0, 30: 7.0, 60: 6.0}, 6.0),       # median at 30 of (5, 6) = 5.5 < 7: stop
              _trial(3, {0: 9.9, 30: 4.0, 60: 3.5}, 3.5),       # 4 < median(5, 6, 7) = 6; 3.5 < 5: kept
              _trial(4, {0: 9.9, 30: 5.0, 60: 5.5}, 3.0)]       # 5 < 5.5 at 30; 5.5 > median(4, 5, 6, 3.5) = 4.5
    fraction, stopped = pruner_agreement(trials, space, maximize=False)
    # finals 4, 5, 6, 3.5, 3: median 4; trial 2 (6) is in the worse half, trial 4 (3.0) is not
    assert stopped == 2 and fraction == pytest.approx(0.5)
    # maximizing instead: trials 3 and 4 fall below the median at step 30, and both end in the lower half
    assert pruner_agreement(trials, space, maximize=True) == (1.0, 2)
    none = space.model_copy(update={"pruner": space.pruner.model_copy(update={"kind": "none"})})
    assert math.isnan(pruner_agreement(trials, none, maximize=False)[0])


def test_floor_checks_compare_the_samplers_seed_by_seed():
    rows = [dict(minutes=None, workers=1, trials_per_hour=100.0, pruner="none", sampler="random", sampler_seed=0,
                 best=3.0, direction="minimize", pruner_agreement=math.nan, would_prune=0),
            dict(minutes=None, workers=2, trials_per_hour=170.0, pruner="none", sampler="random", sampler_seed=0,
                 best=3.0, direction="minimize", pruner_agreement=math.nan, would_prune=0)]
    for seed, rnd, tpe, agree, stops in [(0, 3.0, 2.8, 0.5, 4), (1, 2.9, 3.0, 1.0, 2), (2, 3.2, 2.9, math.nan, 0)]:
        rows.append(dict(minutes=3.0, workers=2, trials_per_hour=1.0, pruner="none", sampler="random",
                         sampler_seed=seed, best=rnd, direction="minimize", pruner_agreement=agree, would_prune=stops))
        rows.append(dict(minutes=3.0, workers=2, trials_per_hour=1.0, pruner="median", sampler="tpe",
                         sampler_seed=seed, best=tpe, direction="minimize", pruner_agreement=math.nan, would_prune=0))
    checks = search_floor_checks(pd.DataFrame(rows)).set_index("check")
    assert checks.value.iloc[0] == pytest.approx(1.7) and checks.ok.iloc[0]
    gain = checks.loc[[c for c in checks.index if c.startswith("tpe+median best minus random")][0]]
    assert gain.value == pytest.approx((0.2 - 0.1 + 0.3) / 3) and gain.ok          # lower is better here
    assert checks.loc["sampler seeds on which it found the better best"].value == 2
    agreement = checks.loc[[c for c in checks.index if c.startswith("median pruner replayed")][0]]
    assert agreement.value == pytest.approx((0.5 * 4 + 1.0 * 2) / 6)                # weighted by stops
