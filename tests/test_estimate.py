"""The dry run's cost arithmetic on a hand-made timing table, and run-suite --dry-run end to end."""
import json
import math

import pandas as pd
import pytest

from nlsearch.bench.estimate import PlannedRun, calibration, core_seconds_per_token, estimate, summary_line

TABLE = pd.DataFrame({
    "preset": ["a", "a", "b"], "T": [512, 4096, 512], "B": [8, 8, 8],
    "seconds": [0.4096, 8.192, 1.0], "hardware": ["cpu, 2 threads", "cpu, 2 threads", "cpu, 1 threads"]})


def test_core_seconds_per_token_interpolates_in_length_and_counts_threads():
    # a: 0.4096 s x 2 threads / (8 x 512) = 2e-4 core-s per token at 512; 8.192 x 2 / (8 x 4096) = 5e-4 at 4096
    assert core_seconds_per_token(TABLE, "a", 512) == pytest.approx(2e-4)
    assert core_seconds_per_token(TABLE, "a", 4096) == pytest.approx(5e-4)
    assert core_seconds_per_token(TABLE, "a", 2304) == pytest.approx(3.5e-4)     # halfway
    assert core_seconds_per_token(TABLE, "a", 128) == pytest.approx(2e-4)       # nearest outside
    assert core_seconds_per_token(TABLE, "b", 1000) == pytest.approx(1.0 / 4096)
    assert math.isnan(core_seconds_per_token(TABLE, "c", 512))
    assert math.isnan(core_seconds_per_token(None, "a", 512))


def test_estimate_sums_unfinished_runs_per_model():
    runs = [PlannedRun("a", "a", 18_000_000, 512, False),       # 18e6 x 2e-4 = 3600 core-s = 1 core-hour
            PlannedRun("a", "a", 18_000_000, 512, True),        # finished: free
            PlannedRun("a", "a", 7_200_000, 4096, False),       # 7.2e6 x 5e-4 = 3600 core-s
            PlannedRun("mine", None, 1000, 512, False)]
    frame = estimate(runs, TABLE).set_index("model")
    assert frame.loc["a", "runs"] == 3 and frame.loc["a", "finished"] == 1 and frame.loc["a", "to_run"] == 2
    assert frame.loc["a", "core_hours"] == pytest.approx(2.0)
    assert math.isnan(frame.loc["mine", "core_hours"])
    line = summary_line(estimate(runs, TABLE))
    assert "4 runs, 1 finished, 3 to run: about 2.0 core-hours" in line and "no timing for mine" in line
    assert frame.loc["a", "longest_run_h"] == pytest.approx(1.0)


def test_finished_runs_measured_speed_scales_the_estimate():
    """a's finished runs spent 0.5x and 0.7x the table's core-seconds per token (median 0.6): a's run
    left costs 0.6 core-hours, not 1; b has no finished run: it takes the median over every finished run
    (0.5, 0.7 and a run of another model at 0.9: 0.7); a run without a measured speed (older record,
    failure) counts for nothing."""
    runs = [PlannedRun("a", "a", 18_000_000, 512, False),                    # 1 core-hour by the table
            PlannedRun("a", "a", 1, 512, True, measured=0.5 * 2e-4),
            PlannedRun("a", "a", 1, 4096, True, measured=0.7 * 5e-4),          # at its own length
            PlannedRun("a", "a", 1, 512, True),                                # no speed on record
            PlannedRun("c", "b", 1, 512, True, measured=0.9 / 4096),
            PlannedRun("b2", "b", 4096 * 3600, 512, False)]                    # b's 1 core-hour
    cal = calibration(runs, TABLE)
    assert cal.per_preset == {"a": (pytest.approx(0.6), 2), "b": (pytest.approx(0.9), 1)}
    assert cal.overall == (pytest.approx(0.7), 3)
    assert cal.factor("z") == pytest.approx(0.7) and cal.runs("z") == 0 and cal.runs(None) == 0
    frame = estimate(runs, TABLE).set_index("model")
    assert frame.loc["a", "core_hours"] == pytest.approx(0.6) and frame.loc["a", "calibrated_by"] == 2
    assert frame.loc["b2", "core_hours"] == pytest.approx(0.9)                  # b's own runs (under "c")
    only_a = [r for r in runs if r.preset == "a"] + [PlannedRun("d", "b", 4096 * 3600, 512, False)]
    assert estimate(only_a, TABLE).set_index("model").loc["d", "core_hours"] == pytest.approx(0.6)   # every run's
    assert "scaled by the finished runs' measured speed" in summary_line(frame.reset_index())
    plain = [PlannedRun("a", "a", 18_000_000, 512, False)]
    assert estimate(plain, TABLE).core_hours.iloc[0] == pytest.approx(1.0)      # nothing measured: the table's
    assert "scaled" not in summary_line(estimate(plain, TABLE))


def test_the_wall_clock_is_the_core_hours_shared_out_but_never_under_the_longest_run():
    runs = [PlannedRun("a", "a", 18_000_000, 512, False),       # 1 core-hour
            PlannedRun("a", "a", 9_000_000, 512, False),        # 0.5
            PlannedRun("b", "b", 4096 * 3600 // 2, 512, False)]  # b: 1/4096 core-s per token: 0.5
    frame = estimate(runs, TABLE)
    assert "with 1 worker about 2.0 hours" in summary_line(frame, 1)
    assert "with 2 workers about 1.0 hours" in summary_line(frame, 2)
    assert "with 8 workers about 1.0 hours (no number of workers ends before the longest run left: 1.00 h)" \
        in summary_line(frame, 8)
    assert "worker" not in summary_line(frame)


def test_run_suite_dry_run_counts_a_finished_run_and_trains_nothing(tmp_path):
    from nlsearch.train.suite import run_suite, suite_runs
    from train_fixtures import TINY_MODEL, write_tasks

    tasks_dir = write_tasks(tmp_path / "tasks")
    task = str(tasks_dir / "tiny_recall.yaml")
    before = suite_runs([TINY_MODEL], [task], "smoke", [0, 1], tmp_path / "suite")
    assert [r.finished for r in before] == [False, False]
    assert not (tmp_path / "suite").exists()                                      # nothing written
    run_suite([TINY_MODEL], [task], "smoke", [0], tmp_path / "suite")
    after = suite_runs([TINY_MODEL], [task], "smoke", [0, 1], tmp_path / "suite")
    assert [r.finished for r in after] == [True, False]
    record = json.loads(next((tmp_path / "suite" / "runs").rglob("record.json")).read_text())
    assert after[0].measured == pytest.approx(1 / record["tokens_per_cpu_s"]) and after[1].measured is None
    assert after[0].tokens == 20 * 4 * 256 and after[0].length == 256                # smoke recall: 20 steps x 4 x 256


def test_an_interrupted_run_counts_only_the_steps_after_its_checkpoint(tmp_path):
    """A run stopped at step 10 of 20 (its checkpoint there) costs half its tokens in the estimate; one
    with no checkpoint, all of them."""
    from nlsearch.train import default_run_dir, plan_run, train
    from nlsearch.train.suite import suite_runs
    from train_fixtures import TINY_MODEL, write_tasks

    tasks_dir = write_tasks(tmp_path / "tasks")
    task = str(tasks_dir / "tiny_recall.yaml")
    plan = plan_run(TINY_MODEL, task, "smoke", 0, "cpu", None, None)
    run_dir = default_run_dir(tmp_path / "suite" / "runs", plan)
    train(plan.cfg, plan.task, plan.budget, 0, run_dir=run_dir, stop_after=10)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000010"
    stopped, fresh = suite_runs([TINY_MODEL], [task], "smoke", [0, 1], tmp_path / "suite")
    assert not stopped.finished and stopped.tokens == 10 * 4 * 256 and fresh.tokens == 20 * 4 * 256
