"""The contract every mixer keeps, written once (Optuna style).

A mixer's test class inherits :class:`MixerContract` and provides ``make_mixer(d_model)``; it may
override ``expected_state_size`` where the carried state is bounded rather than fixed. The class name
has no ``Test`` prefix, so pytest collects the tests only through the subclasses.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn


def state_tensors(state) -> List[Tensor]:
    """Every tensor in a (nested) state, in order; ints and None are not state numbers."""
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in state_tensors(s)]
    return []


def carried_per_sequence(state) -> int:
    return sum(t[0].numel() for t in state_tensors(state))


class MixerContract:
    d_model = 16
    batch = 2
    seq_len = 45
    cuts = (1, 7, 8, 30)             # pieces of length 1, 6, 1, 22, 15: across any chunk boundary
    token_len = 20                   # length of the token-by-token run
    state_lengths = (45, 32)         # sequence lengths at which the state size is checked
    atol = 1e-10

    def make_mixer(self, d_model: int) -> nn.Module:
        raise NotImplementedError

    def expected_state_size(self, mixer: nn.Module, seq_len: int) -> Tuple[int, bool]:
        """(size, exact): after ``seq_len`` tokens the state holds exactly ``size`` numbers per
        sequence when ``exact``, at most ``size`` otherwise."""
        return mixer.state_size(), True

    def mixes_over_time(self, mixer: nn.Module) -> bool:
        """False for a mixer whose output at t reads input t alone (a window of 1, a plain MLP)."""
        return True

    def _mixer(self, dtype=torch.float64) -> nn.Module:
        torch.manual_seed(0)
        return self.make_mixer(self.d_model).to(dtype)

    def _input(self, t: int, dtype=torch.float64, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.batch, t, self.d_model, generator=g, dtype=dtype)

    def _assert_close(self, actual: Tensor, expected: Tensor, what: str) -> None:
        torch.testing.assert_close(actual, expected, atol=self.atol, rtol=self.atol, msg=lambda m: f"{what}: {m}")

    def test_causal(self):
        mixer, x = self._mixer(), self._input(self.seq_len)
        p = self.seq_len // 2
        y1, _ = mixer(x)
        x2 = x.clone()
        x2[:, p] += 1.0
        y2, _ = mixer(x2)
        assert torch.equal(y1[:, :p], y2[:, :p]), "a later input changed an earlier output"
        assert not torch.allclose(y1[:, p], y2[:, p]), "output t does not depend on input t (shifted?)"
        if self.mixes_over_time(mixer):
            assert not torch.allclose(y1[:, p + 1:], y2[:, p + 1:]), "a changed input changed no later output"

    def test_pieces_with_carried_state_equal_whole(self):
        mixer, x = self._mixer(), self._input(self.seq_len)
        y, state = mixer(x)
        bounds = (0, *self.cuts, self.seq_len)
        ys, s = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            y_piece, s = mixer(x[:, a:b], s)
            ys.append(y_piece)
        self._assert_close(torch.cat(ys, dim=1), y, "outputs")
        whole, pieces = state_tensors(state), state_tensors(s)
        assert len(whole) == len(pieces)
        for i, (a, b) in enumerate(zip(pieces, whole)):
            self._assert_close(a, b, f"state tensor {i}")

    def test_token_by_token_equals_whole(self):
        mixer, x = self._mixer(), self._input(self.token_len)
        y, _ = mixer(x)
        ys, s = [], None
        for xt in x.split(1, dim=1):
            y_t, s = mixer(xt, s)
            ys.append(y_t)
        self._assert_close(torch.cat(ys, dim=1), y, "outputs")

    def test_gradients_finite_for_all_parameters(self):
        mixer, x = self._mixer(torch.float32), self._input(self.seq_len, torch.float32)
        y1, s = mixer(x[:, :20])
        y2, _ = mixer(x[:, 20:], s)
        torch.cat([y1, y2], dim=1).square().mean().backward()
        for name, p in mixer.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    def test_gradients_flow_through_the_carried_state(self):
        """Backward through pieces with carried state equals backward through the whole sequence
        (float64): the state is part of the graph, not a detached copy."""
        mixer = self._mixer()
        x = self._input(self.seq_len).requires_grad_()
        w = torch.linspace(-1, 1, self.seq_len * self.d_model, dtype=x.dtype).view(1, self.seq_len, -1)
        params = [p for p in mixer.parameters() if p.requires_grad]
        whole = torch.autograd.grad((mixer(x)[0] * w).sum(), [x] + params, allow_unused=True)
        y1, s = mixer(x[:, :20])
        y2, _ = mixer(x[:, 20:], s)
        pieces = torch.autograd.grad((torch.cat([y1, y2], dim=1) * w).sum(), [x] + params, allow_unused=True)
        assert whole[0].abs().sum() > 0
        for a, b in zip(whole, pieces):
            if a is None or b is None:
                assert a is None and b is None
                continue
            self._assert_close(b, a, "gradients")

    def test_state_size_counts_the_returned_state(self):
        mixer = self._mixer()
        for t in self.state_lengths:
            _, state = mixer(self._input(t))
            assert all(s.shape[0] == self.batch for s in state_tensors(state)), "state is not batch-first"
            carried = carried_per_sequence(state)
            size, exact = self.expected_state_size(mixer, t)
            assert carried == size if exact else carried <= size, (t, carried, size)

    def test_float64_deterministic(self):
        mixer, x = self._mixer(), self._input(self.seq_len)
        (y1, s1), (y2, s2) = mixer(x), mixer(x)
        assert torch.equal(y1, y2)
        assert all(torch.equal(a, b) for a, b in zip(state_tensors(s1), state_tensors(s2)))
