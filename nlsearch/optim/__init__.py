"""Outer optimizers: the slowest levels of the nesting (weights, then the optimizer's own memory of
gradients). Each config is registered by ``kind`` and builds a ``torch.optim.Optimizer``."""
from nlsearch.optim.adamw import AdamWConfig
from nlsearch.optim.dmgd import DMGD, DMGDConfig
from nlsearch.optim.muon import MuonAdamW, MuonConfig
from nlsearch.optim.periodic import PeriodicOptimizer, parameter_periods

__all__ = ["AdamWConfig", "DMGD", "DMGDConfig", "MuonAdamW", "MuonConfig", "PeriodicOptimizer",
           "parameter_periods"]
