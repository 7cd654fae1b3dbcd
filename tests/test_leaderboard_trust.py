"""Submissions are data: YAML tags that would construct Python objects are refused, a mixer ``kind``
never names a module to import, and custom mixers come only from installed ``nlsearch.mixers``
entry points (a fake distribution on ``sys.path`` here), loaded only when a config names them."""
from __future__ import annotations

import sys
import textwrap

import pytest
import yaml

from nlsearch.config import ConfigError
from nlsearch.leaderboard.protocol import load_protocol
from nlsearch.leaderboard.submit import load_submission, submit
from nlsearch.train import read_record
from leaderboard_fixtures import write_protocol
from train_fixtures import TINY_MODEL

PLUGIN = '''
from typing import Literal, Optional

import torch
from torch import nn

from nlsearch.config import Strict


class ShiftConfig(Strict):
    """y_t = W (x_t + x_{t-1}): a one-token memory."""
    kind: Literal["shift"] = "shift"

    def build(self, d_model: int) -> "ShiftMixer":
        return ShiftMixer(d_model)

    def levels(self):
        return []


class ShiftMixer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, state=None):
        prev = torch.zeros_like(x[:, :1]) if state is None else state
        return self.proj(x + torch.cat([prev, x[:, :-1]], dim=1)), x[:, -1:]

    def state_size(self, seq_len: Optional[int] = None) -> int:
        return self.proj.in_features
'''


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A folder on sys.path holding an installed-looking distribution with two mixer entry points, and a
    module that leaves a marker file when imported."""
    root = tmp_path / "site"
    (root / "lbplugin_demo").mkdir(parents=True)
    (root / "lbplugin_demo" / "__init__.py").write_text(PLUGIN)
    info = root / "lbplugin_demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lbplugin-demo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nlsearch.mixers]\nshift = lbplugin_demo:ShiftConfig\n"
                                           "broken = lbplugin_demo:NoSuchThing\n")
    marker = tmp_path / "imported.txt"
    (root / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(root))
    yield root, marker
    for name in ("lbplugin_demo", "evil_module"):
        sys.modules.pop(name, None)


@pytest.fixture()
def protocol(tmp_path):
    return load_protocol(write_protocol(tmp_path / "protocol", tasks=("tiny_recall",)))


def _config(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("text", [
    "d_model: 32\nmixer: !!python/object/apply:os.system ['touch {marker}']\n",
    "!!python/object/apply:os.system ['touch {marker}']\n",
    "d_model: 32\nmixer: {{kind: !!python/name:os.system , n_heads: 2}}\n",
    "d_model: 32\noptimizer: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
])
def test_python_tags_are_refused_and_nothing_runs(tmp_path, protocol, text):
    marker = tmp_path / "marker"
    path = _config(tmp_path, text.format(marker=marker))
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_submission(path, protocol)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["os:system", "evil_module:run", "lbplugin_demo.ShiftConfig", "Evil_Module",
                                  "../evil_module", "evil_module"])
def test_a_kind_never_imports_the_module_it_names(tmp_path, site, protocol, kind):
    _, marker = site
    path = _config(tmp_path, yaml.safe_dump({**TINY_MODEL, "mixer": {"kind": kind}}))
    with pytest.raises(ConfigError, match="mixer.kind") as err:
        load_submission(path, protocol)
    assert repr(kind) in str(err.value) and str(path) in str(err.value)
    assert not marker.exists() and "evil_module" not in sys.modules and "lbplugin_demo" not in sys.modules


def test_an_unknown_kind_lists_the_installed_plugins_without_loading_them(tmp_path, site, protocol):
    path = _config(tmp_path, yaml.safe_dump({**TINY_MODEL, "mixer": {"kind": "warp"}}))
    with pytest.raises(ConfigError, match=r"unknown mixer kind 'warp'.*\['broken', 'shift'\]"):
        load_submission(path, protocol)
    assert "lbplugin_demo" not in sys.modules


def test_a_builtin_config_does_not_load_plugins(site, protocol):
    sub = load_submission(TINY_MODEL, protocol)
    assert sub.plugins == {} and "lbplugin_demo" not in sys.modules


def test_a_broken_entry_point_is_a_clear_error(tmp_path, site, protocol):
    path = _config(tmp_path, yaml.safe_dump({**TINY_MODEL, "mixer": {"kind": "broken"}}))
    with pytest.raises(ConfigError, match=r"entry point 'broken' \(lbplugin_demo:NoSuchThing\) failed to load"):
        load_submission(path, protocol)


def test_a_plugin_mixer_is_scored_and_its_origin_recorded(tmp_path, site, protocol):
    path = _config(tmp_path, yaml.safe_dump({**TINY_MODEL, "name": "shifty", "mixer": {"kind": "shift"}}))
    entry, _ = submit(path, "shifty", protocol=protocol, root=tmp_path / "lb", runs_dir=tmp_path / "runs")
    assert entry.plugins == {"shift": "lbplugin-demo==1.0 (lbplugin_demo:ShiftConfig)"}
    assert entry.config["mixer"] == {"kind": "shift"}
    (result,) = entry.tasks.values()
    assert [s.status for s in result.seeds] == ["completed"] * 3
    assert entry.state_size == 32                                 # the plugin's own state_size, one layer
    assert read_record(result.seeds[0].run.run_dir).config["mixer"] == {"kind": "shift"}


def _laughs(depth: int) -> str:
    """YAML whose aliases expand 10x per level: ``depth`` 9 would be about a billion strings."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_in_submissions_and_result_files(tmp_path, protocol):
    path = _config(tmp_path, yaml.safe_dump(TINY_MODEL) + _laughs(9))
    with pytest.raises(ConfigError, match=r"alias \(\*a0\) is not accepted") as err:
        load_submission(path, protocol)
    assert str(path) in str(err.value)
    results = tmp_path / "results.yaml"
    results.write_text("protocol: x\nbudget: &b cpu@3\nconfig_sha256: *b\ntasks: {}\n")
    from nlsearch.leaderboard.verify import load_results_file
    with pytest.raises(ConfigError, match="alias"):
        load_results_file(results, protocol, "cpu@3", "0" * 64, str(path))


def test_a_huge_bad_value_is_quoted_short():
    from nlsearch.config import SHOWN_INPUT_CHARS, parse_config
    from nlsearch.models import ModelConfig
    with pytest.raises(ConfigError) as err:
        parse_config(ModelConfig, {**TINY_MODEL, "unknown_key": ["lol"] * 100_000}, "big.yaml")
    text = str(err.value)
    assert "unknown_key" in text and "big.yaml" in text and "['lol', 'lol'," in text and "..." in text
    assert len(text) < 2 * SHOWN_INPUT_CHARS
    nested = "lol"
    for _ in range(30):                       # what 30 levels of aliases build: each level 10 references
        nested = [nested] * 10
    with pytest.raises(ConfigError) as err:   # quoted without expanding 10**30 strings
        parse_config(ModelConfig, {**TINY_MODEL, "bomb": nested}, "bomb.yaml")
    assert "bomb" in str(err.value) and len(str(err.value)) < 2 * SHOWN_INPUT_CHARS
