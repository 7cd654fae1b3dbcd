"""The benchmark command runs end to end at a tiny size and writes its tables (no timing asserted)."""
import pandas as pd
import pytest

from nlsearch.cli import main


def test_bench_ops_writes_tables(tmp_path):
    rc = main(["bench", "ops", "--lengths", "16", "32", "--batch", "1", "--heads", "1", "--head-dim", "4",
               "--rules", "deltanet", "titans-lmm", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    df = pd.read_parquet(tmp_path / "ops-cpu.parquet")
    assert set(df.rule) == {"sdpa", "conv", "deltanet", "titans-lmm"}
    assert set(df[df.rule == "conv"].impl) == {"fast", "naive"}
    assert set(df["T"]) == {16, 32}
    assert (df.seconds > 0).all() and (df.tokens_per_s > 0).all()
    assert {"hardware", "torch", "git_commit", "saved_bytes_per_token"} <= set(df.columns)
    assert (tmp_path / "ops-cpu.md").read_text().startswith("# nlsearch bench ops")


def test_bench_ops_bad_device_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    rc = main(["bench", "ops", "--device", "cuda", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert not (tmp_path / "out").exists()


def test_bench_models_writes_tables(tmp_path):
    rc = main(["bench", "models", "--presets", "transformer", "deltanet", "--lengths", "16", "32", "--batch", "1",
               "--d-model", "16", "--n-layers", "1", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    df = pd.read_parquet(tmp_path / "models-cpu.parquet")
    assert set(df.preset) == {"transformer", "deltanet"} and set(df["T"]) == {16, 32}
    assert (df.tokens_per_s > 0).all()
    assert "deltanet time per token" in (tmp_path / "models-cpu.md").read_text()


def test_bench_models_unknown_preset_fails_cleanly(tmp_path):
    assert main(["bench", "models", "--presets", "nope", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_measure_many_times_the_steps_round_robin(monkeypatch):
    """Steps are timed in turn (a, b, a, b, ...), after one warm-up each that counts saved bytes; a
    step over its time budget is skipped in later rounds; a quick step runs untimed before each timed
    run."""
    import torch

    from nlsearch.bench import timing
    calls, clock = [], [0.0]

    def make(name, cost):
        def step():                          # costs `cost` seconds of a fake clock: no real timing
            calls.append(name)
            clock[0] += cost
            w = torch.ones(3, requires_grad=True)
            return (w * w).sum()
        return step

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    steps = {"a": make("a", 0.001), "b": make("b", 0.001), "slow": make("slow", 0.05)}
    monkeypatch.setattr(timing, "REWARM_BELOW_S", 0.0)
    res = timing.measure_many(steps, torch.device("cpu"), repeats=3, budget_s=0.04)
    assert calls == ["a", "b", "slow"] + ["a", "b", "slow"] + ["a", "b"] * 2
    assert [res[n]["repeats"] for n in ("a", "b", "slow")] == [3, 3, 1]
    assert res["a"]["saved_bytes"] > 0 and res["slow"]["seconds"] >= 0.05
    monkeypatch.setattr(timing, "REWARM_BELOW_S", 0.01)     # a and b run untimed before each timed run
    calls.clear()
    res = timing.measure_many(steps, torch.device("cpu"), repeats=3, budget_s=0.04)
    assert calls == ["a", "b", "slow"] + ["a", "a", "b", "b", "slow"] + ["a", "a", "b", "b"] * 2
    assert [res[n]["repeats"] for n in ("a", "b", "slow")] == [3, 3, 1]
    assert res["a"]["seconds"] == pytest.approx(0.001)      # the untimed run is not in the time


def test_bench_models_update_replaces_only_the_named_presets(tmp_path):
    """``--update``: the named presets are timed again and replace their rows; the others keep theirs
    and the run that timed them; a ratio floor between rows of different runs is not computed; a table
    of another setting is refused, naming the column, and left as it was."""
    common = ["--lengths", "512", "--batch", "1", "--d-model", "32", "--n-layers", "1", "--repeats", "1",
              "--device", "cpu", "--out", str(tmp_path)]
    assert main(["bench", "models", "--presets", "transformer", "mamba2", *common]) == 0
    first = pd.read_parquet(tmp_path / "models-cpu.parquet")
    assert main(["bench", "models", "--presets", "mamba2", "--update", *common]) == 0
    after = pd.read_parquet(tmp_path / "models-cpu.parquet")
    assert sorted(after.preset) == ["mamba2", "transformer"]
    kept, old = after[after.preset == "transformer"].iloc[0], first[first.preset == "transformer"].iloc[0]
    assert kept.seconds == old.seconds and kept.run == old.run
    assert after[after.preset == "mamba2"].iloc[0].run != first[first.preset == "mamba2"].iloc[0].run
    text = (tmp_path / "models-cpu.md").read_text()
    assert "mamba2 step / transformer step, T=512 (timed in different runs: not compared)" in text
    assert "rows from 2 runs" in text
    assert main(["bench", "models", "--presets", "mamba2", "--update", *common[:7], "4", *common[8:]]) == 2
    assert pd.read_parquet(tmp_path / "models-cpu.parquet").equals(after)
    assert main(["bench", "models", "--update", *common]) == 2
