"""Byte corpora through HF datasets: the default stdlib corpus, user files, splits, cache keys, windows."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from nlsearch.tasks.batch import TaskContext, torch_rng
from nlsearch.tasks.corpus import CorpusSpec, fingerprint, load_corpus, resolve_files
from nlsearch.tasks.lm import LMParams, random_windows, sample_lm, tile_windows


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "tasks-cache")


def test_default_corpus_is_english_prose(cache: str):
    corpus = load_corpus(CorpusSpec(), cache_dir=cache)
    assert corpus.n_bytes > 1_000_000
    assert corpus.validation.numel() == round(0.05 * corpus.n_bytes)
    text = bytes(corpus.train[:200_000].tolist()).decode("utf-8")
    words = text.split()
    for common in ("the", "is", "of", "and", "a"):
        assert words.count(common) > 300
    assert sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.8


def test_windows_are_next_byte_prediction():
    stream = torch.arange(50, dtype=torch.uint8)
    batch = random_windows(stream, 16, 10, torch_rng("w", 0))
    assert batch.shape == (16, 10) and batch.mask.all()
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    assert torch.equal(batch.targets[:, -1], batch.inputs[:, -1] + 1)
    assert batch.targets.max() <= 49
    tiles = tile_windows(stream, 7)
    assert tiles.shape == (7, 7) and torch.equal(tiles.inputs.flatten(), torch.arange(49))
    with pytest.raises(ValueError, match="length 50 needs 51 bytes"):
        random_windows(stream, 1, 50, torch_rng("w", 0))


def test_lm_batches_are_deterministic_and_split(cache: str):
    ctx = TaskContext(cache_dir=cache)
    p = LMParams()
    a, b = (sample_lm(p, 4, 64, "train", 0, torch_rng("lm", 1), ctx) for _ in range(2))
    c = sample_lm(p, 4, 64, "train", 0, torch_rng("lm", 2), ctx)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    corpus = load_corpus(p.corpus, cache_dir=cache)
    val = sample_lm(p, 4, 64, "eval", 0, torch_rng("lm", 1), ctx)
    val_text = bytes(corpus.validation.tolist())
    for row in val.inputs:
        assert bytes(row.tolist()) in val_text


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_text_files_relative_to_the_spec_folder(tmp_path: Path, cache: str):
    _write(tmp_path / "a.txt", "alpha " * 100)
    _write(tmp_path / "b.txt", "beta " * 100)
    spec = CorpusSpec(source="text", files=("a.txt", "b.txt"), val_fraction=0.1)
    corpus = load_corpus(spec, base_dir=tmp_path, cache_dir=cache)
    joined = ("alpha " * 100 + "\n\n" + "beta " * 100).encode()
    assert bytes(corpus.train.tolist()) + bytes(corpus.validation.tolist()) == joined
    assert bytes(corpus.validation.tolist()) == joined[-round(0.1 * len(joined)):]


def test_parquet_files_and_hash_split(tmp_path: Path, cache: str):
    docs = [f"document number {i} " * 5 for i in range(40)]
    pd.DataFrame({"body": docs}).to_parquet(tmp_path / "c.parquet")
    spec = CorpusSpec(source="parquet", files=("c.parquet",), text_column="body", split="hash", val_fraction=0.3)
    corpus = load_corpus(spec, base_dir=tmp_path, cache_dir=cache)
    train, val = bytes(corpus.train.tolist()).decode(), bytes(corpus.validation.tolist()).decode()
    assert all((d in train) != (d in val) for d in docs)
    assert 3 < sum(d in val for d in docs) < 25
    with pytest.raises(ValueError, match="no column 'text'"):
        load_corpus(spec.model_copy(update={"text_column": "text"}), base_dir=tmp_path, cache_dir=cache)


def test_source_split_keeps_a_text_file_on_one_side(tmp_path: Path, cache: str):
    names = [f"f{i}.txt" for i in range(30)]
    for i, name in enumerate(names):
        _write(tmp_path / name, f"file {i} line\n" * 10)
    spec = CorpusSpec(source="text", files=tuple(names), split="source", val_fraction=0.3)
    corpus = load_corpus(spec, base_dir=tmp_path, cache_dir=cache)
    train, val = bytes(corpus.train.tolist()).decode(), bytes(corpus.validation.tolist()).decode()
    held = [i for i in range(30) if f"file {i} line" in val]
    assert all((f"file {i} line" in train) != (i in held) for i in range(30)) and 3 < len(held) < 20
    with pytest.raises(ValueError, match="split 'source' needs named sources"):
        CorpusSpec(source="parquet", files=("c.parquet",), split="source")


def test_continual_text_v2_holds_out_the_same_modules_in_every_domain(cache: str):
    """No docstring of a held-out module is in the code domain's training text (version 1 split each
    domain at its own tail: the code tail began inside urllib/parse.py, whose docstrings were in the
    docstrings domain's validation text)."""
    from nlsearch.tasks import load_task
    from nlsearch.tasks import stdlib_text

    domains = load_task("continual_text@2").spec.generator.params["domains"]
    docstrings, code = (CorpusSpec(**d) for d in domains[1:])
    code_train = bytes(load_corpus(code, cache_dir=cache).train.tolist()).decode()
    doc_val = bytes(load_corpus(docstrings, cache_dir=cache).validation.tolist()).decode()
    sources = list(stdlib_text.sourced_documents("code"))
    firsts = {doc.splitlines()[0].strip() for _, doc in stdlib_text.sourced_documents("docstrings")}
    own = [line for line in firsts if len(line) > 40 and sum(line in text for _, text in sources) == 1]
    held = [line for line in own if line in doc_val]                # text found in one module's file only
    assert len(held) > 50                                           # the check has material
    assert [line for line in held if line in code_train] == []


def test_a_changed_file_is_never_served_stale(tmp_path: Path, cache: str):
    path = _write(tmp_path / "d.txt", "first version of the text " * 20)
    spec = CorpusSpec(source="text", files=(str(path),))
    before = load_corpus(spec, cache_dir=cache)
    key = fingerprint(spec, resolve_files(spec, None))
    _write(path, "second, longer version of the text " * 20)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    after = load_corpus(spec, cache_dir=cache)
    assert fingerprint(spec, resolve_files(spec, None)) != key
    assert bytes(after.train.tolist()).startswith(b"second") and after.n_bytes != before.n_bytes
    changed = load_corpus(spec.model_copy(update={"val_fraction": 0.5}), cache_dir=cache)
    assert changed.validation.numel() > after.validation.numel()


def test_missing_and_empty_corpora(tmp_path: Path, cache: str):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(CorpusSpec(source="text", files=("nope.txt",)), base_dir=tmp_path, cache_dir=cache)
    _write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(CorpusSpec(source="text", files=("empty.txt",)), base_dir=tmp_path, cache_dir=cache)
    _write(tmp_path / "one.txt", "a single short document")
    with pytest.raises(ValueError, match="validation split is empty"):
        load_corpus(CorpusSpec(source="text", files=("one.txt",), split="hash", val_fraction=0.01),
                    base_dir=tmp_path, cache_dir=cache)
    with pytest.raises(ValueError, match="needs at least one entry in files"):
        CorpusSpec(source="parquet")
    with pytest.raises(ValueError, match="reads none"):
        CorpusSpec(files=("x.txt",))


def test_a_second_load_is_served_from_the_datasets_cache(tmp_path: Path, monkeypatch, cache: str):
    from nlsearch.tasks import corpus as corpus_module

    _write(tmp_path / "e.txt", "cached text " * 30)
    spec = CorpusSpec(source="text", files=("e.txt",))
    first = load_corpus(spec, base_dir=tmp_path, cache_dir=cache)
    corpus_module._load.cache_clear()

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the fingerprint is unchanged")

    monkeypatch.setattr(corpus_module, "_split_rows", fail)
    second = load_corpus(spec, base_dir=tmp_path, cache_dir=cache)
    assert torch.equal(first.train, second.train) and second.fingerprint == first.fingerprint
