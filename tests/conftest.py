import pytest
import torch

from postgres_fixture import postgres  # noqa: F401 - a throwaway PostgreSQL server for the shared-study tests


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped where none is present (``scripts/gpu-check``
    runs them on a GPU machine; the CPU-autocast tests cover the same casting logic everywhere)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check runs it on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """The process settings every entry point applies (``nlsearch.runtime.tune_process``), before any
    test makes the thread pool: the suite runs what training runs, at its speed."""
    from nlsearch.runtime import tune_process
    tune_process()
