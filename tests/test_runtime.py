"""Process-level allocator settings: applied once, reported in provenance, switchable off."""
import platform

import pytest

from nlsearch import runtime
from nlsearch.provenance import provenance


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(runtime, "_state", {"done": False, "tuned": False})


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("NLSEARCH_MALLOC", "default")
    assert runtime.tune_allocator() is False
    assert runtime.allocator_tuned() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_once_on_glibc_and_recorded(fresh, monkeypatch):
    import torch
    monkeypatch.delenv("NLSEARCH_MALLOC", raising=False)
    assert runtime.tune_allocator() is True
    monkeypatch.setenv("NLSEARCH_MALLOC", "default")        # a second call does not re-read anything
    assert runtime.tune_allocator() is True
    assert provenance(torch.device("cpu"))["allocator"] == "tuned"
