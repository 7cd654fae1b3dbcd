"""Search: a declarative space (``search_spaces/*.yaml``) explored by Optuna, trials on executors.

- ``space``: the schema of a space file and ``load_space``;
- ``compile``: the space as an Optuna define-by-run function (``sample``);
- ``trial``: what a worker runs (``run_trial``);
- ``executors``: in-process and Ray;
- ``study``: storage, sampler, pruner, crash recovery;
- ``driver``: ask → run → tell (``Driver``);
- ``results`` / ``plots``: ``results/<study>/``;
- ``run``: ``run_search``, the function behind ``nlsearch search``.
"""
from nlsearch.search.run import run_search
from nlsearch.search.space import SearchSpace, load_space

__all__ = ["SearchSpace", "load_space", "run_search"]
