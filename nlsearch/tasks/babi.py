"""bAbI-style stories from the project's own templates, facts scattered through corpus filler.

Kinds (after Weston et al. 2015, tasks 1-5):

- ``one_fact``: actors move; "Where is Mary?" -> her latest place.
- ``two_facts``: actors move, pick up and drop objects; "Where is the apple?" -> its current place.
- ``three_facts``: same world; "Where was the apple before the garden?" -> the place the object was in
  just before it reached its current place (asked only when that place was reached once).
- ``relation2``: "The office is north of the garden." on disjoint pairs of places; "What is north of
  the garden?" -> office, or "What is the office north of?" -> garden.
- ``relation3``: "Mary gave the apple to Fred." (each object given once); "Who gave the apple to
  Fred?" -> Mary, "Who did Mary give the apple to?" -> Fred, "What did Mary give to Fred?" -> apple
  (asked only when Mary gave Fred one object).

Movement stories draw a cast of CAST actors and PROPS objects. World rules: an object is picked up
only where it lies (or before it was ever placed), it travels with its holder and stays where it is
dropped. ``relation2`` stories have min(n_facts, 6) facts, ``relation3`` min(n_facts, 8). Sequence i
is of kind ``kinds[i % len(kinds)]``; its facts are inserted in order at sorted uniform fractions of
the filler; the answer is one word.
"""
from __future__ import annotations

import random
from typing import Dict, List, Literal, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from nlsearch.tasks.batch import TaskBatch, TaskContext, from_sequences, py_rng
from nlsearch.tasks.corpus import CorpusSpec, load_corpus
from nlsearch.tasks.haystack import compose

ACTORS = ("Mary", "John", "Daniel", "Sandra", "Fred", "Bill", "Julie", "Jeff")
PLACES = ("kitchen", "garden", "office", "bathroom", "hallway", "bedroom", "cellar", "balcony", "pantry",
          "garage", "attic", "library")
OBJECTS = ("apple", "football", "milk", "book", "hat", "lamp", "kite", "violin")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
MOVE = ("{a} went to the {l}.", "{a} journeyed to the {l}.", "{a} moved to the {l}.", "{a} travelled to the {l}.")
GRAB = ("{a} picked up the {o}.", "{a} grabbed the {o}.", "{a} took the {o}.")
DROP = ("{a} dropped the {o}.", "{a} put down the {o}.", "{a} left the {o}.")
RELATION = "The {x} is {d} of the {y}."
GIVE = "{a} gave the {o} to {b}."
QUESTIONS = ("Where is {a}?", "Where is the {o}?", "Where was the {o} before the {l}?", "What is {d} of the {y}?",
             "What is the {x} {d} of?", "Who gave the {o} to {b}?", "Who did {a} give the {o} to?",
             "What did {a} give to {b}?")
PROMPT = "\n\nQuestion: {q}\nAnswer: "
KINDS = ("one_fact", "two_facts", "three_facts", "relation2", "relation3")
Kind = Literal["one_fact", "two_facts", "three_facts", "relation2", "relation3"]
Story = Tuple[List[str], str, str]
TRIES = 1000
CAST, PROPS = 4, 3


class BabiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filler: CorpusSpec = CorpusSpec()
    kinds: Tuple[Kind, ...] = Field(KINDS, min_length=1)
    n_facts: int = Field(6, ge=3, le=64)


class _World:
    """Where actors are, who holds which object, where objects are and have been."""

    def __init__(self, actors: List[str], objects: List[str]) -> None:
        self.actors, self.objects = actors, objects
        self.at: Dict[str, str] = {}
        self.holder: Dict[str, str] = {}
        self.lies: Dict[str, str] = {}
        self.history: Dict[str, List[str]] = {}

    def _place(self, obj: str, place: Optional[str]) -> None:
        if place is not None and self.lies.get(obj) != place:
            self.lies[obj] = place
            self.history.setdefault(obj, []).append(place)

    def step(self, rng: random.Random, objects: bool) -> str:
        """Applies one random event and returns its sentence."""
        actor = rng.choice(self.actors)
        held = [o for o, a in self.holder.items() if a == actor]
        here = self.at.get(actor)
        free = [o for o in self.objects if o not in self.holder and self.lies.get(o, here) == here]
        roll = rng.random() if objects else 0.0
        if roll >= 0.75 and held:
            obj = rng.choice(held)
            del self.holder[obj]
            return rng.choice(DROP).format(a=actor, o=obj)
        if roll >= 0.5 and free:
            obj = rng.choice(free)
            self.holder[obj] = actor
            self._place(obj, self.at.get(actor))
            return rng.choice(GRAB).format(a=actor, o=obj)
        place = rng.choice([p for p in PLACES if p != self.at.get(actor)])
        self.at[actor] = place
        for obj in held:
            self._place(obj, place)
        return rng.choice(MOVE).format(a=actor, l=place)


def _movement(rng: random.Random, n_facts: int, kind: str) -> Optional[Story]:
    world = _World(rng.sample(ACTORS, CAST), rng.sample(OBJECTS, PROPS))
    facts = [world.step(rng, objects=kind != "one_fact") for _ in range(n_facts)]
    if kind == "one_fact":
        actor = rng.choice(sorted(world.at))
        return facts, QUESTIONS[0].format(a=actor), world.at[actor]
    if kind == "two_facts":
        placed = sorted(world.lies)
        if not placed:
            return None
        obj = rng.choice(placed)
        return facts, QUESTIONS[1].format(o=obj), world.lies[obj]
    ok = sorted(o for o, h in world.history.items() if len(h) >= 2 and h.count(h[-1]) == 1)
    if not ok:
        return None
    obj = rng.choice(ok)
    return facts, QUESTIONS[2].format(o=obj, l=world.history[obj][-1]), world.history[obj][-2]


def _relation2(rng: random.Random, n_facts: int) -> Story:
    places = rng.sample(PLACES, 2 * min(n_facts, len(PLACES) // 2))
    pairs = [(places[2 * i], rng.choice(sorted(OPPOSITE)), places[2 * i + 1]) for i in range(len(places) // 2)]
    facts = [RELATION.format(x=x, d=d, y=y) for x, d, y in pairs]
    x, d, y = rng.choice(pairs)
    if rng.random() < 0.5:
        return facts, QUESTIONS[3].format(d=d, y=y), x
    return facts, QUESTIONS[4].format(x=x, d=d), y


def _relation3(rng: random.Random, n_facts: int) -> Story:
    gifts = [(*rng.sample(ACTORS, 2), obj) for obj in rng.sample(OBJECTS, min(n_facts, len(OBJECTS)))]
    facts = [GIVE.format(a=a, o=o, b=b) for a, b, o in gifts]
    a, b, o = rng.choice(gifts)
    asks = [(QUESTIONS[5].format(o=o, b=b), a), (QUESTIONS[6].format(a=a, o=o), b)]
    if sum(1 for g in gifts if g[:2] == (a, b)) == 1:
        asks.append((QUESTIONS[7].format(a=a, b=b), o))
    question, answer = rng.choice(asks)
    return facts, question, answer


def story(kind: str, n_facts: int, rng: random.Random) -> Story:
    """Returns (facts in story order, question, one-word answer) of one story of ``kind``."""
    for _ in range(TRIES):
        if kind == "relation2":
            return _relation2(rng, n_facts)
        if kind == "relation3":
            return _relation3(rng, n_facts)
        made = _movement(rng, n_facts, kind)
        if made is not None:
            return made
    raise RuntimeError(f"babi: no answerable {kind} story in {TRIES} tries with n_facts={n_facts}")


def _longest(template: str) -> int:
    words = {"a": ACTORS, "b": ACTORS, "l": PLACES, "x": PLACES, "y": PLACES, "o": OBJECTS, "d": tuple(OPPOSITE)}
    return len(template.format(**{k: max(v, key=len) for k, v in words.items()}))


def babi_min_length(p: BabiParams) -> int:
    """Returns an upper bound on the tokens a story, its question and answer take without filler."""
    fact = max(_longest(t) for t in MOVE + GRAB + DROP + (RELATION, GIVE)) + 1
    question = max(_longest(q) for q in QUESTIONS) + len(PROMPT.format(q=""))
    answer = max(len(w) for w in ACTORS + PLACES + OBJECTS)
    return p.n_facts * fact + question + answer - 1


def sample_babi(p: BabiParams, n: int, length: int, split: str, phase: int, gen: torch.Generator,
                ctx: TaskContext) -> TaskBatch:
    """Registry entry: n stories in filler (N, T) scored on the answer word; meta ``kind`` (N,) int64,
    the index of the story's kind in ``p.kinds``."""
    stream = load_corpus(p.filler, ctx.base_dir, ctx.cache_dir).stream(split)
    rng = py_rng(gen)
    seqs, scored = [], []
    for i in range(n):
        facts, question, answer = story(p.kinds[i % len(p.kinds)], p.n_facts, rng)
        fractions = sorted(rng.random() for _ in facts)
        seq, _, idx = compose(stream, length, [f"{f} ".encode() for f in facts], fractions,
                              PROMPT.format(q=question).encode(), answer.encode(), rng, task="babi")
        seqs.append(seq)
        scored.append(idx)
    kinds = torch.arange(n, dtype=torch.int64) % len(p.kinds)
    return from_sequences(seqs, scored, {"kind": kinds})
