"""describe: parameter count, state size, FLOPs estimate and the nesting profile."""
import pytest

from nlsearch.cli import main
from nlsearch.models import build_model, list_presets, load_model_config
from nlsearch.models.describe import describe, nesting_levels


def _profile(name):
    return [(lv.name, lv.clock, lv.period) for lv in nesting_levels(load_model_config(name))]


def test_transformer_profile():
    assert _profile("transformer") == [("attention", "tokens", 1), ("weights", "steps", 1),
                                       ("AdamW moments", "steps", 1)]


def test_titans_lmm_profile():
    assert _profile("titans-lmm") == [("memory (titans-lmm)", "tokens", 16), ("memory momentum", "tokens", 16),
                                      ("weights", "steps", 1), ("AdamW moments", "steps", 1)]


def test_cms_profile():
    assert _profile("cms") == [("attention", "tokens", 1), ("CMS-1", "tokens", 16), ("CMS-2", "tokens", 64),
                               ("weights", "steps", 1), ("AdamW moments", "steps", 1)]


def test_hope_profile():
    levels = _profile("hope")
    assert len(levels) == 6
    assert levels[-2:] == [("weights", "steps", 1), ("AdamW moments", "steps", 1)]
    assert {name for name, _, _ in levels[:4]} == {"self-modifying memory", "self-modifying projections",
                                                   "CMS-1", "CMS-2"}
    assert [period for _, clock, period in levels[:4]] == [16, 16, 16, 64]


def test_steps_clock_cms_levels_sit_among_the_outer_levels():
    cfg = load_model_config({"mixer": {"kind": "attention"}, "mlp": {"kind": "cms", "clock": "steps",
                                                                     "periods": [1, 4]}})
    names = [(lv.name, lv.clock, lv.period) for lv in nesting_levels(cfg)]
    assert names[0] == ("attention", "tokens", 1)
    assert ("CMS-2", "steps", 4) in names and names.index(("CMS-2", "steps", 4)) == len(names) - 1


def test_fastest_level_first_and_depth_counts_levels():
    info = describe(load_model_config("deltanet"))
    assert [row["name"] for row in info["levels"]] == ["memory (deltanet)", "weights", "AdamW moments"]
    assert info["levels"][0]["frequency"] == "every token"
    assert info["nesting_depth"] == 3


@pytest.mark.parametrize("name", list_presets())
def test_describe_counts_match_the_model(name):
    cfg = load_model_config(name)
    info = describe(cfg, seq_len=256)
    model = build_model(cfg)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["state_size"] == model.state_size(256)
    assert info["flops_per_token"] > 2 * info["params_non_embedding"]
    assert info["nesting_depth"] == len(info["levels"]) >= 3


def test_attention_flops_grow_with_length_recurrent_do_not():
    att, mem = load_model_config("transformer"), load_model_config("deltanet")
    assert describe(att, 4096)["flops_per_token"] > describe(att, 512)["flops_per_token"]
    assert describe(mem, 4096)["flops_per_token"] == describe(mem, 512)["flops_per_token"]


def test_cli_describe(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["describe", "titans-lmm"]) == 0
    out = capsys.readouterr().out
    assert "nesting profile" in out and "memory (titans-lmm)" in out
    assert main(["describe", "no-such-preset"]) == 2
    assert "unknown model preset 'no-such-preset'" in capsys.readouterr().out


def test_flops_count_every_application_of_looped_blocks():
    base = load_model_config("transformer")
    flops = [describe(base.model_copy(update={"n_layers": n, "loops": r}))["flops_per_token"]
             for n, r in ((4, 1), (2, 2), (1, 4))]
    assert flops[0] == flops[1] == flops[2]               # four block applications per token each
    assert describe(base.model_copy(update={"n_layers": 1}))["flops_per_token"] < flops[0]


def test_describe_never_allocates_the_model(tmp_path):
    """A 24-layer model of width 16384 (about 80 billion parameters, 300 GB in float32) is described in a
    subprocess whose peak memory stays that of an idle torch process: the model is built on the meta device."""
    import subprocess
    import sys

    import yaml

    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"name": "huge", "d_model": 16384, "n_layers": 24,
                                    "mixer": {"kind": "attention", "n_heads": 128}}))
    script = ("import resource, sys; from nlsearch.cli import main; rc = main(['describe', sys.argv[1]]); "
              "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = int(proc.stdout.split("parameters", 1)[1].split()[0].replace(",", ""))
    assert params > 7e10, params                                        # counted from the shapes
    maxrss_gb = int(proc.stdout.rsplit("maxrss_kb", 1)[1].split()[0]) / 2**20
    assert maxrss_gb < 2.0, maxrss_gb
