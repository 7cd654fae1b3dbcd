"""Needle and bAbI haystacks: exact lengths, answers re-derived from the prompt, scoring only the answer."""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import pytest
import torch

from nlsearch.tasks.babi import KINDS, BabiParams, sample_babi
from nlsearch.tasks.batch import TaskBatch, TaskContext, torch_rng
from nlsearch.tasks.haystack import insert
from nlsearch.tasks.needle import NeedleParams, needle_min_length, sample_needle

NEEDLE = re.compile(rb"The special magic number for ([a-z]+-[a-z]+) is (\d+)\.")
QUESTION = re.compile(rb"\n\nQuestion: (.*)\nAnswer: $")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TaskContext:
    return TaskContext(cache_dir=str(tmp_path_factory.getbasetemp() / "tasks-cache"))


def _prompt_and_answer(batch: TaskBatch, row: int) -> Tuple[bytes, bytes]:
    """Returns (the bytes before the first scored prediction's target, the scored target bytes)."""
    scored = batch.mask[row].nonzero().flatten()
    assert torch.equal(scored, torch.arange(scored[0], batch.shape[1]))
    prompt = bytes(batch.inputs[row, : scored[0] + 1].tolist())
    return prompt, bytes(batch.targets[row, scored].tolist())


@pytest.mark.parametrize("n_needles", [1, 3])
def test_needle_answer_is_the_queried_needles_value(ctx: TaskContext, n_needles: int):
    p = NeedleParams(n_needles=n_needles, depths=(0.0, 0.5, 1.0))
    batch = sample_needle(p, 6, 600, "train", 0, torch_rng("n", n_needles), ctx)
    assert batch.shape == (6, 600)
    for row in range(6):
        prompt, answer = _prompt_and_answer(batch, row)
        needles = dict(NEEDLE.findall(prompt))
        assert len(needles) == n_needles and len(set(needles.values())) == n_needles
        key = re.search(rb"number for ([a-z]+-[a-z]+)\?", QUESTION.search(prompt).group(1)).group(1)
        assert answer == needles[key]
        assert prompt.count(answer) == 1 and prompt.count(key) == 2


def test_needle_depth_is_controlled(ctx: TaskContext):
    p = NeedleParams(depths=(0.0, 0.25, 0.5, 0.75, 1.0))
    batch = sample_needle(p, 5, 2048, "eval", 0, torch_rng("d", 0), ctx)
    assert batch.meta["depth"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=0.05)
    where = [bytes(batch.inputs[i].tolist()).index(b"The special magic") / 2048 for i in range(5)]
    assert where == sorted(where)


@pytest.mark.parametrize("length", [1024, 2048, 4096, 8192, 16384])
def test_lengths_are_exact(ctx: TaskContext, length: int):
    needle = sample_needle(NeedleParams(n_needles=2), 2, length, "eval", 0, torch_rng("l", length), ctx)
    babi = sample_babi(BabiParams(), 2, length, "eval", 0, torch_rng("l", length), ctx)
    assert needle.shape == babi.shape == (2, length)


def test_too_short_is_a_clear_error(ctx: TaskContext):
    p = NeedleParams(n_needles=2)
    with pytest.raises(ValueError, match="needle: length 100 is shorter"):
        sample_needle(p, 1, 100, "train", 0, torch_rng("s", 0), ctx)
    batch = sample_needle(p, 4, needle_min_length(p), "train", 0, torch_rng("s", 0), ctx)
    assert batch.shape == (4, needle_min_length(p))


def test_insert_keeps_order_and_word_boundaries():
    text, starts = insert(b"aaa bbb ccc ddd", [b"X ", b"Y "], [0.3, 0.3])
    assert text == b"aaa bbb X Y ccc ddd" and starts == [8, 10]
    with pytest.raises(ValueError, match="non-decreasing"):
        insert(b"abc", [b"X", b"Y"], [0.5, 0.2])


ACTOR = rb"(Mary|John|Daniel|Sandra|Fred|Bill|Julie|Jeff)"
FACT = re.compile(
    ACTOR + rb" (went|journeyed|moved|travelled) to the (\w+)\."
    rb"|" + ACTOR + rb" (picked up|grabbed|took|dropped|put down|left) the (\w+)\."
    rb"|The (\w+) is (north|south|east|west) of the (\w+)\."
    rb"|" + ACTOR + rb" gave the (\w+) to " + ACTOR + rb"\.")


def _facts(prompt: bytes) -> List[Tuple[str, ...]]:
    out = []
    for m in FACT.finditer(prompt):
        g = [x.decode() if x else None for x in m.groups()]
        if g[0]:
            out.append(("move", g[0], g[2]))
        elif g[3]:
            out.append(("drop" if g[4] in ("dropped", "put down", "left") else "grab", g[3], g[5]))
        elif g[6]:
            out.append(("rel", g[6], g[7], g[8]))
        else:
            out.append(("give", g[9], g[10], g[11]))
    return out


def _solve(facts: List[Tuple[str, ...]], question: str) -> str:
    """An independent reading of the story: where everyone and everything is, and was."""
    at: Dict[str, str] = {}
    holder: Dict[str, str] = {}
    history: Dict[str, List[str]] = {}

    def place(obj: str, where: str) -> None:
        if where and (not history.get(obj) or history[obj][-1] != where):
            history.setdefault(obj, []).append(where)

    for fact in facts:
        if fact[0] == "move":
            at[fact[1]] = fact[2]
            for obj in [o for o, a in holder.items() if a == fact[1]]:
                place(obj, fact[2])
        elif fact[0] == "grab":
            holder[fact[2]] = fact[1]
            place(fact[2], at.get(fact[1]))
        elif fact[0] == "drop":
            holder.pop(fact[2])
    rels = [f[1:] for f in facts if f[0] == "rel"]
    gifts = [f[1:] for f in facts if f[0] == "give"]
    patterns = [
        (r"Where is the (\w+)\?", lambda o: history[o][-1]),
        (r"Where is (\w+)\?", lambda a: at[a]),
        (r"Where was the (\w+) before the (\w+)\?",
         lambda o, p: history[o][len(history[o]) - 1 - history[o][::-1].index(p) - 1]),
        (r"What is (\w+) of the (\w+)\?", lambda d, y: [r[0] for r in rels if r[1:] == (d, y)][0]),
        (r"What is the (\w+) (\w+) of\?", lambda x, d: [r[2] for r in rels if r[:2] == (x, d)][0]),
        (r"Who gave the (\w+) to (\w+)\?", lambda o, b: [g[0] for g in gifts if g[1:] == (o, b)][0]),
        (r"Who did (\w+) give the (\w+) to\?", lambda a, o: [g[2] for g in gifts if g[:2] == (a, o)][0]),
        (r"What did (\w+) give to (\w+)\?", lambda a, b: [g[1] for g in gifts if (g[0], g[2]) == (a, b)][0]),
    ]
    for pattern, answer in patterns:
        m = re.fullmatch(pattern, question)
        if m:
            return answer(*m.groups())
    raise AssertionError(f"unparsed question {question!r}")


def test_babi_answers_follow_from_the_story(ctx: TaskContext):
    p = BabiParams(n_facts=8)
    batch = sample_babi(p, 60, 1024, "train", 0, torch_rng("b", 0), ctx)
    seen = set()
    for row in range(60):
        prompt, answer = _prompt_and_answer(batch, row)
        question = QUESTION.search(prompt).group(1).decode()
        facts = _facts(prompt)
        kind = KINDS[int(batch.meta["kind"][row])]
        expect = {"relation2": 6}.get(kind, 8)
        assert len(facts) == expect, (kind, facts)
        assert _solve(facts, question) == answer.decode()
        seen.add(question.split()[0] + str(len(re.findall(r"\w+", question))))
    assert len(seen) >= 6


def test_babi_kinds_and_determinism(ctx: TaskContext):
    p = BabiParams(kinds=("one_fact", "relation3"), n_facts=4)
    a, b, c = (sample_babi(p, 4, 512, "train", 0, torch_rng("k", s), ctx) for s in (1, 1, 2))
    assert a.meta["kind"].tolist() == [0, 1, 0, 1]
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    for row in (0, 2):
        assert b"Where is " in _prompt_and_answer(a, row)[0][-60:]
    with pytest.raises(ValueError, match="Extra inputs"):
        BabiParams(kinds=("four_facts",), bogus=1)
