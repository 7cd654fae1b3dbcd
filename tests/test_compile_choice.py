"""The per-run choice of compiled layer steps (nlsearch.train.plan.choose_compile): from the compile
timings of ``nlsearch bench models --compile``, overridden by NLSEARCH_COMPILE, recorded in the run."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from nlsearch import runtime
from nlsearch.train import plan as plan_mod
from nlsearch.train import loop
from nlsearch.train.plan import CompileChoice, choose_compile, plan_run
from train_fixtures import TINY_MODEL, tiny_budget, write_tasks


def timings(preset: str = "hope", eager: float = 1.0, compiled: float = 0.8, compile_s: float = 60.0,
            fns: int = 2, d_model: int = 128, n_layers: int = 2, device: str = "cpu") -> pd.DataFrame:
    """A compile table as the benchmark writes it: B=8 at 2 threads, T=512 and 4096 (times x T/512)."""
    rows = [dict(preset=preset, T=t, B=8, d_model=d_model, n_layers=n_layers, threads=2, device=device,
                 seconds=eager * t / 512, compiled_seconds=(compiled * t / 512) if fns else math.nan,
                 compile_seconds=compile_s if fns else math.nan, step_functions=fns) for t in (512, 4096)]
    return pd.DataFrame(rows)


@pytest.fixture
def auto(monkeypatch):
    """NLSEARCH_COMPILE unset, a C++ compiler present."""
    monkeypatch.delenv("NLSEARCH_COMPILE", raising=False)
    monkeypatch.setattr(plan_mod, "cpp_compiler", lambda: "g++")


@pytest.fixture(scope="module")
def hope_plan():
    # recall_small under cpu: 400 steps x batch 32 at T=128, one thread
    return plan_run("hope", "recall_small", "cpu", 0, device="cpu")


def test_compiles_where_the_steps_save_more_than_the_compile_costs(auto, hope_plan):
    # saving (1.0 - 0.8) s x 2 threads / (8 x 512) tokens = 9.8e-5 core-s per token (T=128 is below
    # the table: the T=512 row); a step is 32 x 128 tokens at one thread: 0.40 s; 400 steps: 160 s > 60 s
    choice = choose_compile(hope_plan, 400, timings())
    assert choice.on and choice.setting == "on"
    assert choice.reason == "hope: 400 steps x 0.40 s saved = 160 s > 60 s to compile"


def test_eager_where_the_compile_costs_more(auto, hope_plan):
    assert not choose_compile(hope_plan, 400, timings(compile_s=161.0)).on
    short = choose_compile(hope_plan, 100, timings())                  # a resumed run with 100 steps left
    assert not short.on and short.reason == "hope: 100 steps x 0.40 s saved = 40 s <= 60 s to compile"
    assert not choose_compile(hope_plan, 400, timings(compiled=1.1)).on   # compiled is slower: no saving


def test_each_train_length_compiles_again(auto):
    plan = plan_run("hope", "recall_small", "cpu", 0, device="cpu")
    two = plan_run("hope", "recall_small", tiny_budget(steps=400).model_copy(update={
        "recall": plan.kb.model_copy(update={"train_lengths": (128, 256)})}), 0, device="cpu")
    assert choose_compile(two, 400, timings()).reason.endswith("120 s to compile")


def test_eager_without_a_cpp_compiler(auto, hope_plan, monkeypatch):
    monkeypatch.setattr(plan_mod, "cpp_compiler", lambda: None)
    assert choose_compile(hope_plan, 400, timings()) == CompileChoice(False, "no C++ compiler for inductor")


def test_the_environment_forces_it_either_way(auto, hope_plan, monkeypatch):
    monkeypatch.setattr(plan_mod, "cpp_compiler", lambda: None)
    monkeypatch.setenv("NLSEARCH_COMPILE", "1")
    assert choose_compile(hope_plan, 1, None) == CompileChoice(True, "NLSEARCH_COMPILE=1")
    monkeypatch.setattr(plan_mod, "cpp_compiler", lambda: "g++")
    monkeypatch.setenv("NLSEARCH_COMPILE", "off")
    assert choose_compile(hope_plan, 10 ** 6, timings()) == CompileChoice(False, "NLSEARCH_COMPILE=0")
    monkeypatch.setenv("NLSEARCH_COMPILE", "maybe")
    with pytest.raises(ValueError, match="NLSEARCH_COMPILE='maybe'"):
        choose_compile(hope_plan, 400, timings())


def test_eager_for_what_the_table_did_not_measure(auto, hope_plan, tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    tiny = plan_run(TINY_MODEL, tasks / "tiny_recall.yaml", tiny_budget(), 0, device="cpu")
    assert choose_compile(tiny, 10 ** 6, timings(preset="tiny")).reason == "tiny is not a preset: no compile timing"
    edited = dataclasses.replace(hope_plan, cfg=hope_plan.cfg.model_copy(update={"d_model": 64}))
    assert not choose_compile(edited, 10 ** 6, timings()).on                    # named hope, not hope's config
    assert "not a preset" in choose_compile(edited, 10 ** 6, timings()).reason
    for table in (timings(preset="cms"), timings(d_model=256), timings(n_layers=4), timings(device="cuda"),
                  timings().drop(columns=["compile_seconds"]), None):
        choice = choose_compile(hope_plan, 10 ** 6, table if table is not None else pd.DataFrame())
        assert choice == CompileChoice(False, "hope: no compile timing on cpu (nlsearch bench models --compile)")
    assert choose_compile(hope_plan, 10 ** 6, timings(fns=0)) == CompileChoice(False, "hope has no layer step "
                                                                                       "to compile")


def test_the_record_carries_the_choice_and_training_steps_apply_it(tmp_path, monkeypatch):
    """The choice is logged once, kept in the record and its session; training steps run with it,
    evaluation eager."""
    monkeypatch.delenv("NLSEARCH_COMPILE", raising=False)
    tasks = write_tasks(tmp_path / "tasks")
    seen = {"train": set(), "eval": set()}
    real_step, real_eval = loop.train_step, loop.evaluate

    def spy_step(*args, **kw):
        seen["train"].add(runtime.compile_steps())
        return real_step(*args, **kw)

    def spy_eval(*args, **kw):
        seen["eval"].add(runtime.compile_steps())
        return real_eval(*args, **kw)

    monkeypatch.setattr(loop, "train_step", spy_step)
    monkeypatch.setattr(loop, "evaluate", spy_eval)
    budget = tiny_budget(steps=4, eval_interval=2)
    lines = []
    res = loop.train(TINY_MODEL, tasks / "tiny_recall.yaml", budget, 0, run_dir=tmp_path / "a", log=lines.append)
    assert lines == ["compiled layer steps off: tiny is not a preset: no compile timing"]
    assert res.record.compiled_steps == "off" and res.record.compile_reason == "tiny is not a preset: no compile timing"
    assert res.record.sessions[0]["compile_reason"] == res.record.compile_reason
    assert seen == {"train": {False}, "eval": {False}}

    monkeypatch.setattr(loop, "choose_compile", lambda plan, steps: CompileChoice(True, f"test: {steps} steps"))
    seen = {"train": set(), "eval": set()}
    res = loop.train(TINY_MODEL, tasks / "tiny_recall.yaml", budget, 0, run_dir=tmp_path / "b")
    assert (res.record.compiled_steps, res.record.compile_reason) == ("on", "test: 4 steps")
    assert seen == {"train": {True}, "eval": {False}}
    assert runtime.compile_steps() is False                      # the run's setting ends with it

    monkeypatch.setenv("NLSEARCH_COMPILE", "sometimes")          # refused before anything is written
    with pytest.raises(ValueError, match="NLSEARCH_COMPILE"):
        loop.train(TINY_MODEL, tasks / "tiny_recall.yaml", budget, 0, run_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.skipif(runtime.cpp_compiler() is None, reason="inductor needs a C++ compiler on the CPU")
def test_a_run_that_chooses_compiled_steps_trains_with_them(tmp_path, monkeypatch):
    """The automatic path end to end: a preset the table says pays compiles its steps and trains."""
    monkeypatch.delenv("NLSEARCH_COMPILE", raising=False)
    monkeypatch.setattr(plan_mod, "compile_table", lambda device: timings("cms", compile_s=0.01, fns=1))
    runtime.forget_compiled_steps()
    tasks = write_tasks(tmp_path / "tasks")
    res = loop.train("cms", tasks / "tiny_recall.yaml", tiny_budget(steps=3, eval_interval=3), 0,
                     run_dir=tmp_path / "run")
    assert res.record.compiled_steps == "on" and res.record.compile_reason.startswith("cms: 3 steps x ")
    assert runtime._compiled and all(math.isfinite(x) for x in res.losses)
    runtime.forget_compiled_steps()
