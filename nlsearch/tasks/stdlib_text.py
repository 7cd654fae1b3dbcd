"""Text that ships with Python, so the default corpus needs no download.

Three parts, each a list of documents in a fixed order:

- ``reference``: the language reference topics of ``pydoc_data.topics`` (what ``help("if")`` shows),
  English prose with grammar snippets; one document per topic, topics sorted by name.
- ``docstrings``: module, class and function docstrings of the pure-Python stdlib modules in
  ``MODULE_FILES``, read with ``ast`` (nothing is imported); one document per docstring.
- ``code``: the source of the same modules; one document per file.

The text depends on the Python version; ``part_signature`` hashes the files it is read from, so a
cache keyed on it never serves another version's text. Files missing from an installation are skipped.
"""
from __future__ import annotations

import ast
import hashlib
import sysconfig
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

PARTS = ("reference", "docstrings", "code")

MODULE_FILES = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "cmd.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py",
    "_pydecimal.py", "difflib.py", "doctest.py", "email/message.py", "enum.py", "fileinput.py",
    "fnmatch.py", "fractions.py", "ftplib.py", "functools.py", "getopt.py", "gettext.py", "glob.py",
    "gzip.py", "heapq.py", "hmac.py", "html/parser.py", "http/client.py", "http/server.py",
    "imaplib.py", "inspect.py", "ipaddress.py", "json/decoder.py", "json/encoder.py", "locale.py",
    "logging/__init__.py", "mailbox.py", "mimetypes.py", "numbers.py", "optparse.py", "os.py",
    "pdb.py", "pickle.py", "pprint.py", "pydoc.py", "queue.py", "random.py", "shlex.py", "shutil.py",
    "smtplib.py", "socket.py", "statistics.py", "string.py", "subprocess.py", "tarfile.py",
    "tempfile.py", "textwrap.py", "threading.py", "timeit.py", "tokenize.py", "traceback.py",
    "turtle.py", "typing.py", "unittest/case.py", "urllib/parse.py", "urllib/request.py", "uuid.py",
    "warnings.py", "weakref.py",
)

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _topics_file() -> Path:
    import pydoc_data.topics as topics

    return Path(topics.__file__)


def _module_files() -> List[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [root / rel for rel in MODULE_FILES if (root / rel).is_file()]


def part_files(part: str) -> List[Path]:
    """Returns the files ``part`` is read from."""
    _check(part)
    return [_topics_file()] if part == "reference" else _module_files()


def part_signature(part: str) -> str:
    """Returns a sha256 over the part's name and the bytes of the files it is read from."""
    h = hashlib.sha256(part.encode())
    for path in part_files(part):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _module_name(path: Path) -> str:
    return path.relative_to(Path(sysconfig.get_paths()["stdlib"])).as_posix()


def _reference() -> Iterator[Tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topic:{name}", topics[name]


def _docstrings() -> Iterator[Tuple[str, str]]:
    for path in _module_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, _DOC_NODES):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield _module_name(path), doc


def _code() -> Iterator[Tuple[str, str]]:
    for path in _module_files():
        yield _module_name(path), path.read_text(encoding="utf-8")


_BUILDERS: Dict[str, Callable[[], Iterator[Tuple[str, str]]]] = {"reference": _reference, "docstrings": _docstrings,
                                                                 "code": _code}


def _check(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"unknown stdlib text part {part!r}; expected one of {PARTS}")


def sourced_documents(part: str) -> Iterator[Tuple[str, str]]:
    """Yields ``(source, document)`` of ``part`` in their fixed order; the source is the stdlib module
    a docstring or file comes from (``urllib/parse.py``; the same in ``docstrings`` and ``code``) or
    ``topic:<name>`` for the reference."""
    _check(part)
    return _BUILDERS[part]()


def documents(part: str) -> Iterator[str]:
    """Yields the documents of ``part`` in their fixed order."""
    return (doc for _, doc in sourced_documents(part))
