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


def test_step_function_is_the_plain_function_unless_asked(monkeypatch):
    def step(x):
        return x + 1
    monkeypatch.delenv("NLSEARCH_COMPILE", raising=False)
    assert runtime.step_function(step) is step
    for off in ("0", "", "false", "no"):
        monkeypatch.setenv("NLSEARCH_COMPILE", off)
        assert runtime.step_function(step) is step
    import torch
    assert provenance(torch.device("cpu"))["compiled_steps"] == "off"


@pytest.mark.slow
def test_compiled_steps_match_eager_hope(monkeypatch):
    """NLSEARCH_COMPILE=1 (torch.compile of the self-modifying chunk and the MLP memory's mini-batch
    step): same loss and gradients as eager, up to float32 reordering; compiled once, reused."""
    import torch
    from torch._dynamo.utils import counters

    from nlsearch.models import build_model, load_model_config
    counters.clear()
    cfg = load_model_config("hope").model_copy(update={"d_model": 32})
    tokens = torch.randint(0, 256, (2, 41), generator=torch.Generator().manual_seed(0))
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("NLSEARCH_COMPILE", flag)
        torch.manual_seed(0)
        model = build_model(cfg)
        logits, _ = model(tokens[:, :-1])                    # 40 tokens: chunks of 16, then a tail of 8
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        out.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    assert len(runtime._compiled) == 2
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]   # compiled, whole
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=1e-5)
    for g0, g1 in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(g1, g0, atol=1e-4, rtol=1e-3)


def _python(code: str, **env) -> str:
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NLSEARCH_DENORMALS": "flush", **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


SUBNORMAL = """
import torch
torch.set_num_threads(2)
{before}
from nlsearch import runtime
from nlsearch.provenance import provenance
ok = runtime.flush_denormals()
a = torch.full((256, 64), 1e-20)
print(ok, bool((a @ a.T).eq(0).all()), bool((torch.full((1 << 18,), 1e-20) * 1e-20).eq(0).all()),
      provenance(torch.device("cpu"))["denormals"])
"""


def test_subnormals_are_flushed_on_every_thread_when_set_first():
    assert _python(SUBNORMAL.format(before="")) == "True True True flushed"


def test_kept_when_switched_off():
    assert _python(SUBNORMAL.format(before=""), NLSEARCH_DENORMALS="keep") == "False False False kept"


def test_a_pool_made_before_the_flag_is_reported_not_flushed():
    """The flag is per thread: workers made earlier keep subnormals, and the process says so."""
    made_first = "torch.full((1 << 18,), 1.0).mul(2).sum(); torch.randn(256, 256) @ torch.randn(256, 256)"
    flushed, *_, recorded = _python(SUBNORMAL.format(before=made_first)).split()
    assert (flushed, recorded) == ("False", "kept")


def _exit_15(signum, frame):
    raise SystemExit(15)


def test_sigterm_takes_ctrl_cs_path_once_and_the_handlers_are_put_back():
    """Under ``watch_interrupts``: SIGTERM raises KeyboardInterrupt and is named by ``interrupt_exit``;
    a second SIGTERM during the clean-up is ignored; Ray's init replacing the handler is undone by
    ``reclaim_sigterm``; the restore function leaves the handlers as they were before."""
    import os
    import signal

    from nlsearch.runtime import interrupt_exit, interrupted, reclaim_sigterm, watch_interrupts

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    restore = watch_interrupts()
    try:
        assert not interrupted() and interrupt_exit() == ("Ctrl-C", 130)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)                            # handled before kill returns
        assert interrupted() and interrupt_exit() == ("SIGTERM", 143)
        os.kill(os.getpid(), signal.SIGTERM)                                # the clean-up goes on
        signal.signal(signal.SIGTERM, _exit_15)                             # as ray.init does
        reclaim_sigterm()
        os.kill(os.getpid(), signal.SIGTERM)                                # ignored again: ours, not Ray's
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == before[0]
    signal.signal(signal.SIGTERM, before[1])
