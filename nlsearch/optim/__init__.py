"""Outer optimizers: the slowest levels of the nesting (weights, then the optimizer's own memory of
gradients). Each config is registered by ``kind`` and builds a ``torch.optim.Optimizer``."""
from nlsearch.optim.adamw import AdamWConfig

__all__ = ["AdamWConfig"]
