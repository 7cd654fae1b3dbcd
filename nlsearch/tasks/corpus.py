"""Byte corpora: text through HF ``datasets``, split into train and validation byte streams, cached.

A corpus is a list of documents (a stdlib text part's documents, one text file each, or one Parquet
row each), UTF-8 encoded and joined with a blank line. The split rule is a named flag:

- ``tail``: the last ``val_fraction`` of the joined bytes is validation (a contiguous tail);
- ``hash``: a document is validation iff sha256(document) / 2^256 < ``val_fraction`` (stable under
  reordering and appending documents);
- ``source``: as ``hash``, on the name of the document's source instead of its text: the stdlib
  module a docstring or file comes from, a reference topic, a text file's name. Every document of a
  source lands on the same side, in every corpus: the docstrings of a validation module are never in
  another corpus's training code (``tail`` splits each corpus at its own place; ``hash`` splits a
  module's docstrings apart from its file).

The two streams are cached through ``datasets.Dataset.from_generator`` with an explicit fingerprint:
sha256 of the spec, the resolved file paths and a signature of their contents (stdlib parts: a hash
of the source files; user files: size and modification time), so a changed spec or file is rebuilt,
never served stale. Both streams are held in memory as uint8 tensors.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from nlsearch.tasks import stdlib_text

FORMAT = 1
SEPARATOR = b"\n\n"
CHUNK = 1 << 20
Part = Literal["reference", "docstrings", "code"]


class CorpusSpec(BaseModel):
    """``source``: ``stdlib`` (no download; ``parts`` of the text Python ships), or ``text`` /
    ``parquet`` files (``files``, relative to the task spec's folder; ``text_column`` for Parquet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["stdlib", "text", "parquet"] = "stdlib"
    parts: Tuple[Part, ...] = ("reference", "docstrings")
    files: Tuple[str, ...] = ()
    text_column: str = "text"
    split: Literal["tail", "hash", "source"] = "tail"
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _source_fits(self) -> "CorpusSpec":
        if self.source == "stdlib" and self.files:
            raise ValueError("files are for source 'text' or 'parquet'; source 'stdlib' reads none")
        if self.source != "stdlib" and not self.files:
            raise ValueError(f"source {self.source!r} needs at least one entry in files")
        if self.source == "stdlib" and not self.parts:
            raise ValueError("source 'stdlib' needs at least one entry in parts")
        if self.split == "source" and self.source == "parquet":
            raise ValueError("split 'source' needs named sources (stdlib parts or text files); a parquet "
                             "row has none: use split 'hash'")
        return self


@dataclass(frozen=True)
class Corpus:
    """``train``, ``validation``: (n_bytes,) uint8 streams; ``fingerprint``: the cache key."""

    train: Tensor
    validation: Tensor
    fingerprint: str

    def stream(self, split: str) -> Tensor:
        """Returns the train stream for ``train`` and the validation stream for ``eval``, (n_bytes,)."""
        return self.train if split == "train" else self.validation

    @property
    def n_bytes(self) -> int:
        return self.train.numel() + self.validation.numel()


def resolve_files(spec: CorpusSpec, base_dir: Optional[Path]) -> List[str]:
    """Returns absolute paths of ``spec.files``; raises FileNotFoundError naming a missing one."""
    out = []
    for name in spec.files:
        path = Path(name).expanduser()
        path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        out.append(str(path.resolve()))
    return out


def _signature(spec: CorpusSpec, files: List[str]) -> List[object]:
    if spec.source == "stdlib":
        return [stdlib_text.part_signature(part) for part in spec.parts]
    return [[f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files]


def fingerprint(spec: CorpusSpec, files: List[str]) -> str:
    """Returns the cache key: sha256 of the format version, spec, resolved files and their signature."""
    blob = {"format": FORMAT, "spec": spec.model_dump(mode="json"), "files": files,
            "signature": _signature(spec, files)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _documents(spec: CorpusSpec, files: List[str], cache_dir: Optional[str]) -> Iterator[Tuple[Optional[str], str]]:
    """``(source, document)`` in order; the source is None for a parquet row."""
    if spec.source == "stdlib":
        for part in spec.parts:
            yield from stdlib_text.sourced_documents(part)
        return
    from datasets import load_dataset

    if spec.source == "text":
        ds = load_dataset("text", data_files=files, sample_by="document", split="train", cache_dir=cache_dir)
        texts = ds["text"]
        if spec.split == "source" and len(texts) != len(files):
            raise ValueError(f"split 'source' needs one document per file: {len(files)} files gave {len(texts)}")
        yield from zip(spec.files, texts)               # one document per file, in the order given
        return
    ds = load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    if spec.text_column not in ds.column_names:
        raise ValueError(f"parquet corpus has no column {spec.text_column!r}; columns: {ds.column_names}")
    yield from ((None, t or "") for t in ds[spec.text_column])


def _is_validation(doc: bytes, val_fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(doc).digest(), "big") < val_fraction * 2 ** 256


def _split_rows(spec_json: str, files_json: str, cache_dir: Optional[str]) -> Iterator[dict]:
    spec, files = CorpusSpec.model_validate_json(spec_json), json.loads(files_json)
    sourced = [(src, d.encode("utf-8")) for src, d in _documents(spec, files, cache_dir) if d]
    docs = [d for _, d in sourced]
    if spec.split == "tail":
        joined = SEPARATOR.join(docs)
        cut = len(joined) - int(round(len(joined) * spec.val_fraction))
        streams = {"train": joined[:cut], "validation": joined[cut:]}
    else:
        keys = [src.encode("utf-8") for src, _ in sourced] if spec.split == "source" else docs
        val = [_is_validation(key, spec.val_fraction) for key in keys]
        streams = {"train": SEPARATOR.join(d for d, v in zip(docs, val) if not v),
                   "validation": SEPARATOR.join(d for d, v in zip(docs, val) if v)}
    for split, data in streams.items():
        for start in range(0, max(len(data), 1), CHUNK):
            yield {"split": split, "chunk": data[start: start + CHUNK]}


@lru_cache(maxsize=8)
def _load(fp: str, spec_json: str, files: Tuple[str, ...], cache_dir: Optional[str]) -> Corpus:
    from datasets import Dataset, Features, Value
    from datasets.exceptions import DatasetGenerationError

    features = Features({"split": Value("string"), "chunk": Value("binary")})
    kwargs = {"spec_json": spec_json, "files_json": json.dumps(files), "cache_dir": cache_dir}   # a list would shard
    try:
        ds = Dataset.from_generator(_split_rows, features=features, cache_dir=cache_dir, fingerprint=fp,
                                    gen_kwargs=kwargs)
    except DatasetGenerationError as e:
        if isinstance(e.__cause__, (ValueError, OSError)):
            raise e.__cause__ from None
        raise
    table = ds.data.table
    splits, chunks = table.column("split").to_pylist(), table.column("chunk").to_pylist()
    streams = {s: b"".join(c for name, c in zip(splits, chunks) if name == s) for s in ("train", "validation")}
    return Corpus(*(torch.frombuffer(bytearray(streams[s]), dtype=torch.uint8) if streams[s]
                    else torch.zeros(0, dtype=torch.uint8) for s in ("train", "validation")), fp)


def load_corpus(spec: CorpusSpec, base_dir: Optional[Path] = None, cache_dir: Optional[str] = None) -> Corpus:
    """Returns the corpus with its train and validation byte streams; raises ValueError when the
    corpus or one of its splits is empty."""
    files = resolve_files(spec, base_dir)
    corpus = _load(fingerprint(spec, files), spec.model_dump_json(), tuple(files), cache_dir)
    what = f"corpus ({spec.source}: {', '.join(files) or ', '.join(spec.parts)})"
    if corpus.n_bytes == 0:
        raise ValueError(f"{what} is empty")
    for split, stream in (("train", corpus.train), ("validation", corpus.validation)):
        if stream.numel() == 0:
            raise ValueError(f"{what}: the {split} split is empty (split={spec.split!r}, "
                             f"val_fraction={spec.val_fraction}); add text or change the split rule")
    return corpus
