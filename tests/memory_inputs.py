"""Random, numerically tame inputs for memory-rule tests (float64 by default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nlsearch.ops import MemoryState


def memory_inputs(b=2, h=2, t=33, dk=6, dv=6, *, decay=False, momentum=False, eta_max=0.5,
                  dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    uni = lambda lo, hi: lo + (hi - lo) * torch.rand(b, h, t, generator=g, dtype=dtype)  # noqa: E731
    out = dict(q=rnd(b, h, t, dk), k=F.normalize(rnd(b, h, t, dk), dim=-1), v=rnd(b, h, t, dv),
               eta=uni(0.0, eta_max), log_alpha=uni(0.5, 1.0).log() if decay else None,
               theta=uni(0.05, 0.95) if momentum else None)
    if requires_grad:
        out = {n: None if x is None else x.clone().requires_grad_() for n, x in out.items()}
    return out


def mlp_state(b=2, h=2, d=6, hidden=12, depth=2, *, momentum=False, dtype=torch.float64, seed=1,
              requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    dims = [d] + [hidden] * (depth - 1) + [d]
    ws = tuple(torch.randn(b, h, o, i, generator=g, dtype=dtype) * i ** -0.5 for i, o in zip(dims, dims[1:]))
    if requires_grad:
        ws = tuple(w.requires_grad_() for w in ws)
    mom = tuple(0.1 * torch.randn(w.shape, generator=g, dtype=dtype) for w in ws) if momentum else None
    return MemoryState(ws, mom)
