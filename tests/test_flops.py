"""``describe``'s FLOPs per token against ``torch.utils.flop_counter.FlopCounterMode`` on a real forward pass.

describe estimates 2 FLOPs per weight of every linear map per application, plus each mixer's own sequence work
(``flops_per_token``). The counter counts every matmul-like op (mm, bmm, conv, attention under the math
backend) and no elementwise op. Checked on the matmul-dominated presets (vocabulary 1024, so the head weighs):

- the transformer exactly: the counter's FLOPs inside every ``nn.Linear`` (2 × weights, head included) plus
  half of the attention it counts: describe counts causal attention (a token sees T/2 keys on average), the
  counter the full T × T product it is handed (the mask removes no work);
- every other preset's total within ``MARGIN`` (10%), and describe's sequence work (its total less the counted
  linear maps) within a factor ``SEQ_FACTOR`` (4) of what the counter sees outside the linear maps. The margin
  covers the memory mixers' sequence work being a formula (~3 passes over the fast weights + the fast form's
  intra-block products): measured, it is 0.93-2.8x the products the fast forms run (2.4-2.8x for the dot-rule
  forms, linear attention and mamba2, which solve no triangular system; for mamba, describe's 6 FLOPs per scan
  state entry against a scan the counter mostly does not see, being elementwise); the difference is 0.7-7% of the
  total at d_model 128 (measured total ratios 0.99-1.07); and describe not counting the short convolutions (<1%).
"""
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nlsearch.models import load_model_config
from nlsearch.models.describe import describe

MATMUL_PRESETS = ["transformer", "deltanet", "gated-deltanet", "linear-attention", "mamba", "mamba2", "ttt-linear",
                  "ttt-mlp", "titans-lmm"]
MARGIN, SEQ_FACTOR = 0.10, 4.0


def _measure(name, seq_len):
    """(describe's FLOPs per token, counted FLOPs per token in nn.Linear modules, counted FLOPs per token in all)."""
    raw = load_model_config(name).model_dump()
    raw["vocab_size"] = 1024
    cfg = load_model_config(raw)
    torch.manual_seed(0)
    model = cfg.build()
    tokens = torch.randint(0, cfg.vocab_size, (1, seq_len))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens)
    linear = {f"LM.{n}" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    counts = counter.get_flop_counts()
    in_linear = sum(sum(counts[n].values()) for n in linear if n in counts)
    assert in_linear > 0
    return describe(cfg, seq_len)["flops_per_token"], in_linear / seq_len, counter.get_total_flops() / seq_len


@pytest.mark.parametrize("seq_len", [64, 256])
def test_transformer_is_the_linear_maps_plus_the_causal_half_of_attention(seq_len):
    """Exact: every linear map at 2 FLOPs per weight (head included) + half of the counted T × T attention."""
    est, in_linear, total = _measure("transformer", seq_len)
    assert est == pytest.approx(in_linear + 0.5 * (total - in_linear), rel=1e-9)


@pytest.mark.parametrize("name", [n for n in MATMUL_PRESETS if n != "transformer"])
def test_total_within_margin_of_the_counter(name):
    est, in_linear, total = _measure(name, 128)
    assert abs(est / total - 1) <= MARGIN, (est, total)
    est_seq, counted_seq = est - in_linear, total - in_linear        # describe's and the counter's sequence work
    assert counted_seq / SEQ_FACTOR <= est_seq <= SEQ_FACTOR * counted_seq, (est_seq, counted_seq)
