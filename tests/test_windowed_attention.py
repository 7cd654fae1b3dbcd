"""Blocked sliding-window attention equals attention under an explicit (T, S) window mask."""
import pytest
import torch

from nlsearch.layers.attention import windowed_attention


def _reference(q, k, v, window):
    t, s = q.shape[2], k.shape[2]
    qp = torch.arange(s - t, s)[:, None]
    kp = torch.arange(s)[None, :]
    allowed = (kp <= qp) & (qp - kp < window)
    scores = (q @ k.mT) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("t,cached,window", [(45, 0, 6), (45, 5, 6), (7, 0, 3), (64, 11, 16), (20, 30, 1)])
def test_blocked_window_matches_masked_reference(t, cached, window):
    g = torch.Generator().manual_seed(t + cached + window)
    q = torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, cached + t, 8, generator=g, dtype=torch.float64) for _ in range(2))
    y = windowed_attention([q], [k, v], window, lambda qb, kb, vb, mask: torch.nn.functional
                           .scaled_dot_product_attention(qb, kb, vb, attn_mask=mask))
    torch.testing.assert_close(y, _reference(q, k, v, window), atol=1e-12, rtol=1e-12)
