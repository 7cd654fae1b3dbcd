"""Task generators by short stable name (the name a YAML spec's ``generator.name`` holds).

Every generator has a strict params model, a ``sample`` function
``(params, n, length, split, phase, torch.Generator, TaskContext) -> TaskBatch`` of shape (n, length),
the shortest length it accepts, its token vocabulary and its phase names (one phase unless continual).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Type

from pydantic import BaseModel

from nlsearch.tasks import babi, continual, drift, lm, needle, recall


def _one_phase(_params: Any) -> List[str]:
    return ["main"]


def _bytes(_params: Any) -> int:
    return lm.VOCAB


@dataclass(frozen=True)
class Generator:
    params: Type[BaseModel]
    sample: Callable[..., Any]
    min_length: Callable[[Any], int]
    vocab_size: Callable[[Any], int] = _bytes
    phases: Callable[[Any], List[str]] = _one_phase


def _vocab(p: Any) -> int:
    return p.vocab_size


GENERATORS: Dict[str, Generator] = {
    "mqar": Generator(recall.RecallParams, recall.sample_recall, recall.recall_min_length, _vocab),
    "lm_bytes": Generator(lm.LMParams, lm.sample_lm, lambda p: 1),
    "needle": Generator(needle.NeedleParams, needle.sample_needle, needle.needle_min_length),
    "babi": Generator(babi.BabiParams, babi.sample_babi, babi.babi_min_length),
    "continual_recall": Generator(continual.ContinualRecallParams, continual.sample_continual_recall,
                                  lambda p: 2, _vocab, continual.phase_names_recall),
    "continual_text": Generator(continual.ContinualTextParams, continual.sample_continual_text, lambda p: 1,
                                phases=continual.phase_names_text),
    "drift_recall": Generator(drift.DriftParams, drift.sample_drift, drift.drift_min_length, _vocab),
}


def get_generator(name: str) -> Generator:
    """Returns the generator registered as ``name``; raises ValueError listing the known names."""
    if name not in GENERATORS:
        raise ValueError(f"unknown task generator {name!r}; known: {sorted(GENERATORS)}")
    return GENERATORS[name]
