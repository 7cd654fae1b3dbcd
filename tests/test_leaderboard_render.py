"""``leaderboard render``: README.md and a static index.html with a sortable table and four plots, entry
strings escaped; the page is loaded in headless Chromium (no console errors, the table sorts, the plots
show). Without Chromium the browser test skips, except where NLSEARCH_REQUIRE_BROWSER is set (CI)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest

from nlsearch.cli import main
from nlsearch.leaderboard.render import render
from nlsearch.leaderboard.store import Store
from leaderboard_fixtures import make_entry, task_result

EVIL = "<script>alert(1)</script>|x $\\nosuchmacro$ ![i](https://evil.example/i.png)\n# [click](https://evil.example)"


def _entries():
    spec = {"alpha": (0.9, 1.5, [0.8, 0.6, 0.4], 0.7, -0.1, 64, 2),
            "beta": (0.5, 2.5, [0.9, 0.9, 0.8], 0.5, -0.4, 4096, 4),
            EVIL: (0.7, 2.0, [0.5, 0.3, 0.1], 0.6, -0.2, 512, 3)}
    out = []
    for name, (acc, bpb, needle, cacc, bwt, state, depth) in spec.items():
        tasks = {
            "r@1": task_result("r@1", [acc] * 3),
            "l@1": task_result("l@1", [bpb, bpb + 0.1, bpb - 0.1], False, "lm", "bits_per_byte"),
            "n@1": task_result("n@1", [sum(needle) / 3] * 3, kind="longctx",
                               per_length={n: [v] * 3 for n, v in zip((1024, 2048, 4096), needle)}),
            "c@1": task_result("c@1", [cacc] * 3, kind="continual", metric="acc", extra={"bwt": [bwt] * 3}),
        }
        out.append(make_entry(name, tasks, state_size=state, depth=depth))
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("render") / "lb"
    store = Store(root)
    for entry in _entries():
        store.add(entry)
    readme, page = render(root)
    return root, readme, page


def test_readme_has_the_table_and_links_every_plot(rendered):
    root, readme, _ = rendered
    text = readme.read_text()
    assert "## test@1, budget tiny@1" in text and "| 1 | alpha |" in text
    assert "0.9000 ± 0.0000" in text and "1.5000 ± 0.1000" in text and "l@1 bits_per_byte ↓" in text
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt;\\|x" in text and "<script>" not in text
    assert "](https://evil" not in text and "\n# " not in text             # no link, image or heading made
    assert "\\!\\[i\\]\\(https://evil.example/i.png\\) \\# \\[click\\]" in text
    svgs = sorted(p.name for p in (root / "plots").glob("*.svg"))
    assert len(svgs) == 4 and all(f"(plots/{name})" in text for name in svgs)


def test_the_page_escapes_entry_strings_and_renders_the_same_twice(rendered):
    root, _, page = rendered
    html = page.read_text()
    assert html.count("<script>") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;|x" in html
    assert html.count("<figure class=\"plot\"") == 4
    assert not re.search(r"(src|href)=[\"']?https?:", html.split("<svg")[0])          # nothing loaded from outside
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix in (".md", ".html", ".svg")}
    render(root)
    assert {p: p.read_bytes() for p in before} == before


def test_cli_render_writes_pages_for_an_empty_board(tmp_path):
    assert main(["leaderboard", "render", "--dir", str(tmp_path / "lb")]) == 0
    assert "No entries yet" in (tmp_path / "lb" / "README.md").read_text()
    assert (tmp_path / "lb" / "index.html").is_file()


def _browser():
    chromium = os.environ.get("NLSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if chromium and driver:
        return chromium, driver
    message = "needs Chromium, chromedriver, selenium (apt-get install chromium chromium-driver; pip install selenium)"
    if os.environ.get("NLSEARCH_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def _column(browser, header: str):
    from selenium.webdriver.common.by import By

    heads = [th.text.replace("▲", "").replace("▼", "").strip()
             for th in browser.find_elements(By.CSS_SELECTOR, "table.leaderboard thead th")]
    col = heads.index(header)
    return [row.find_elements(By.TAG_NAME, "td")[col].text
            for row in browser.find_elements(By.CSS_SELECTOR, "table.leaderboard tbody tr")]


def _click(browser, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in browser.find_elements(By.CSS_SELECTOR, "table.leaderboard thead th"):
        if th.text.replace("▲", "").replace("▼", "").strip() == header:
            th.click()
            return
    raise AssertionError(f"no header {header!r}")


def test_the_page_in_headless_chromium(rendered, browser):
    _, _, page = rendered
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert _column(browser, "name") == ["alpha", " ".join(EVIL.split()), "beta"]                      # by rank
    _click(browser, "params")
    params = [int(x.replace(",", "")) for x in _column(browser, "params")]
    assert params == sorted(params) and len(set(params)) == 3
    _click(browser, "params")
    assert [int(x.replace(",", "")) for x in _column(browser, "params")] == sorted(params, reverse=True)
    _click(browser, "l@1 bits_per_byte ↓")
    assert _column(browser, "name") == ["alpha", " ".join(EVIL.split()), "beta"]
    _click(browser, "state")
    assert _column(browser, "state") == ["64", "512", "4,096"]
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('figure.plot svg')).map(function (s) {"
        " var r = s.getBoundingClientRect(); return [s.parentNode.dataset.plot, r.width, r.height,"
        " s.querySelectorAll('path, use').length]; });")
    assert [s[0] for s in sizes] == ["state", "length", "continual", "depth"]
    assert all(w > 200 and h > 100 and marks > 10 for _, w, h, marks in sizes), sizes
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_plotting_leaves_matplotlib_global_state_alone():
    """A notebook user's backend and style survive the search and leaderboard plots."""
    import matplotlib

    backend, salt = matplotlib.get_backend(), matplotlib.rcParams["svg.hashsalt"]
    import nlsearch.search.plots  # noqa: F401
    from nlsearch.leaderboard.plots import _figure, _svg
    fig, ax = _figure()
    ax.plot([0, 1], [1, 0])
    assert "<svg" in _svg(fig)
    assert matplotlib.get_backend() == backend and matplotlib.rcParams["svg.hashsalt"] == salt


@pytest.mark.parametrize("depths", [(3, 3), (2, 5)])
def test_the_depth_plot_ticks_whole_levels(depths):
    """Nesting depth is a count: the axis shows whole levels around the entries' depths, also when every
    entry has the same depth (matplotlib alone would tick 2.85, 2.90, ...)."""
    import pandas as pd

    from nlsearch.leaderboard.plots import DRAW, _figure
    rows = pd.DataFrame({"task_kind": ["lm"] * 2, "mean": [2.9, 3.2], "nesting_depth": list(depths),
                         "name": ["a", "b"], "metric": ["bits_per_byte"] * 2})
    fig, ax = _figure()
    DRAW["depth"](ax, rows)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert low <= min(depths) - 1 and high >= max(depths) + 1


def test_long_headers_may_wrap_and_cells_do_not(rendered):
    """A window-wide table of long task names: headers may break after ``_`` and ``@`` (``<wbr>``, the
    text itself unchanged), the cells never wrap and the table scrolls in its own box, not the page."""
    _, _, page = rendered
    html = page.read_text()
    head = re.search(r"<thead>(.*?)</thead>", html, re.S).group(1)
    assert "l@<wbr>1 bits_<wbr>per_<wbr>byte ↓" in head
    assert "l@1 bits_per_byte ↓" in re.sub(r"<wbr>", "", head)
    assert "table.leaderboard td { white-space: nowrap; }" in html
    assert re.search(r"<div class=\"table-wrap\"><table class=\"leaderboard\">", html)


def test_the_state_plot_has_a_panel_per_recall_task_naming_every_model():
    """Each model's recall tasks share its state size (one x), so one panel per task, on one x axis,
    each naming every model at its own point: no marker is left without its name."""
    import pandas as pd

    from nlsearch.leaderboard.plots import DRAW, _figure
    rows = pd.DataFrame({"task_kind": ["recall"] * 4, "task": ["r@1", "o@1"] * 2, "mean": [0.9, 0.2, 0.1, 0.3],
                         "state_size": [64, 64, 4096, 4096], "name": ["a", "a", "b", "b"]})
    fig, ax = _figure()
    ax.set_title("recall")
    DRAW["state"](ax, rows)
    panels = fig.axes
    assert [p.get_title() for p in panels] == ["r@1", "o@1"] and fig.get_suptitle() == "recall"
    assert panels[0].get_shared_x_axes().joined(panels[0], panels[1])
    assert [{t.get_text(): t.xy for t in p.texts} for p in panels] == [{"a": (64, 0.9), "b": (4096, 0.1)},
                                                                       {"a": (64, 0.2), "b": (4096, 0.3)}]


def test_an_entrys_speed_is_the_median_of_its_runs():
    """One run of three slowed by a paused or shared machine does not move the entry's tokens/s."""
    from leaderboard_fixtures import _run

    entry = make_entry("m", {"r@1": task_result("r@1", [0.5, 0.5, 0.5])})
    speeds = iter([1000.0, 1010.0, 100.0])
    tasks = {name: t.model_copy(update={"seeds": tuple(
        s.model_copy(update={"run": _run(s.seed).model_copy(update={"tokens_per_s": next(speeds)})}) for s in t.seeds)})
        for name, t in entry.tasks.items()}
    assert entry.model_copy(update={"tasks": tasks}).tokens_per_s() == 1000.0


CROWDED = {   # (BWT, ACC, name) of continual-plot entries crowded together
    # seven, four at almost one point (two memories of one state size score alike)
    "near": [(-0.80, 0.40, "linear-attention"), (-0.80, 0.401, "deltanet"), (-0.799, 0.40, "ttt-linear"),
             (-0.801, 0.399, "gated-deltanet"), (-0.2, 0.6, "transformer"), (-0.75, 0.45, "ttt-mlp"),
             (-0.74, 0.452, "mamba")],               # the last two close, yet markers apart
    # the cpu@3 board's fifteen (BWT, ACC): a dense diagonal run where a first-come placement left
    # names printed over each other and over markers
    "board": [(-0.864, 0.352, "gated-deltanet"), (-0.84, 0.37, "titans-mal"), (-0.895, 0.286, "linear-attention"),
              (-0.712, 0.466, "titans-lmm"), (-0.783, 0.413, "hope"), (-0.922, 0.308, "titans-mag"),
              (-0.35, 0.738, "mamba"), (-0.696, 0.478, "mamba2"), (-0.86, 0.263, "ttt-linear"),
              (-0.791, 0.407, "cms"), (-0.887, 0.335, "deltanet"), (-0.572, 0.571, "cms-steps"),
              (-0.938, 0.296, "titans-mac"), (-0.587, 0.56, "cms-steps-single"), (-0.539, 0.595, "transformer")],
}


@pytest.mark.parametrize("case", sorted(CROWDED))
def test_names_of_entries_with_nearly_equal_numbers_do_not_overprint(case):
    """Every name is drawn inside the axes (those on one marker in one label), no two labels overlap, and
    no label covers another entry's marker."""
    import json

    import pandas as pd

    from matplotlib.text import Text

    from nlsearch.leaderboard.plots import DRAW, _figure
    points = [(b, a) for b, a, _ in CROWDED[case]]
    rows = pd.DataFrame({"task_kind": ["continual"] * len(points), "name": [n for _, _, n in CROWDED[case]],
                         "extra": [json.dumps({"bwt": b, "acc": a}) for b, a in points]})
    fig, ax = _figure()
    DRAW["continual"](ax, rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}     # the words, not the line
    named = [name for text in boxes for name in text.split("\n")]          # entries on one marker share a label
    assert sorted(named) == sorted(rows.name)
    assert case != "near" or len(boxes) == 4
    frame = ax.get_window_extent(renderer)
    for name, box in boxes.items():
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, name
    names = sorted(boxes)
    overlapping = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    assert not overlapping
    markers = ax.transData.transform(points)
    assert not [name for name, box in boxes.items() for x, y in markers if box.contains(x, y)]
    at = {n: tuple(m) for (_, _, n), m in zip(CROWDED[case], markers)}

    def gap(box, point):
        return math.hypot(max(box.x0 - point[0], 0, point[0] - box.x1), max(box.y0 - point[1], 0, point[1] - box.y1))
    lineless = [t.get_text() for t in ax.texts if t.arrow_patch is None]       # nothing but nearness ties them
    misread = [(text, other) for text in lineless for other, m in at.items() if other not in text.split("\n")
               and gap(boxes[text], m) < min(gap(boxes[text], at[n]) for n in text.split("\n"))]
    assert not misread


def test_an_entrys_speed_is_wall_clock_for_every_entry_alike():
    """Runs that also counted CPU time (a figure older runs lack) still give the entry their wall-clock
    median: one column measures every entry the same way."""
    from leaderboard_fixtures import _run

    runs = [_run(0).model_copy(update={"tokens_per_s": 100.0, "tokens_per_cpu_s": 1000.0}),
            _run(1).model_copy(update={"tokens_per_s": 300.0, "tokens_per_cpu_s": 900.0}),
            _run(2).model_copy(update={"tokens_per_s": 500.0, "tokens_per_cpu_s": None})]
    entry = make_entry("m", {"r@1": task_result("r@1", [0.5, 0.5, 0.5])})
    speeds = iter(runs)
    tasks = {name: t.model_copy(update={"seeds": tuple(s.model_copy(update={"run": next(speeds)}) for s in t.seeds)})
             for name, t in entry.tasks.items()}
    assert entry.model_copy(update={"tasks": tasks}).tokens_per_s() == 300.0


def _report(track=("test@1", "tiny@1"), **over):
    """A reproduction's report.json, written by hand: two claims, one with numbers and hostile text."""
    claims = [{"id": "a", "claim": "delta beats dot", "source": "Yang 2024", "outcome": "not reproduced",
               "reason": "1 of 1 pairs fail", "numbers": {"deltanet r@1 accuracy": [0.25, 0.125, 3],
                                                             "linear-attention r@1 accuracy": [0.5, None, 1]}},
              {"id": "b", "claim": EVIL, "source": "Zoology", "outcome": "not testable", "reason": EVIL, "numbers": {}}]
    data = {"protocol": track[0], "budget": track[1], "written": "2026-12-05T10:00:00+00:00", "commit": "abc1234",
            "runs": {"deltanet": {"r@1": {"done": 5, "needed": 5}}, "hope": {"r@1": {"done": 1, "needed": 5}}},
            "claims": claims}
    data.update(over)
    return data


def _board(tmp_path):
    root = tmp_path / "repo" / "leaderboard"
    store = Store(root)
    for entry in _entries():
        store.add(entry)
    return root


def test_the_page_shows_the_reproductions_claims_on_their_track(tmp_path):
    """A report.json beside the leaderboard (``results/reproduce/``) is found: its tally, verdicts and
    numbers (mean ± std (n), a missing std left out) show on its track's section, escaped, linking the
    report; a report of a track with no entry yet gets a section of its own, not another track's."""
    root = _board(tmp_path)
    report = root.parent / "results" / "reproduce" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_report()))
    readme, page = render(root)
    md = readme.read_text().split("### Published claims")[1]
    assert "0 reproduced, 1 not reproduced, 0 unresolved by the seeds, 1 not testable at this budget" in md
    assert "[report](../results/reproduce/report.md)" in md and "6 of 10 runs finished" in md
    assert "| delta beats dot | Yang 2024 | **not reproduced** | deltanet r@1 accuracy: 0.2500 ± 0.1250 \\(n=3\\)<br>" \
           "linear-attention r@1 accuracy: 0.5000 \\(n=1\\) |" in md
    assert "&lt;script&gt;alert\\(1\\)" in md and "<script>" not in md and "](https://evil" not in md
    doc = page.read_text()
    assert doc.count("<script>") == 1 and "Published claims" in doc
    assert "<b>not reproduced</b></summary>1 of 1 pairs fail</details>" in doc
    assert "href=\"../results/reproduce/report.md\"" in doc and "commit abc1234" in doc
    report.write_text(json.dumps(_report(track=("test@1", "other@1"))))     # a track with no entry yet
    text = render(root)[0].read_text()
    ours, other = text.split("## test@1, budget tiny@1")[1].split("## test@1, budget other@1")
    assert "Published claims" not in ours and "| 1 | alpha |" in ours
    assert "No entries on this track yet." in other and "**not reproduced**" in other


@pytest.mark.parametrize("bad, named", [("{not json", "not JSON"),
                                        (json.dumps(_report(claims=[{"claim": "x"}])), "claims.0.source"),
                                        (json.dumps(_report(claims=[{**_report()["claims"][0], "outcome": "won"}])),
                                         "claims.0.outcome"),
                                        (json.dumps({"claims": []}), "protocol"),
                                        (json.dumps(_report(runs={"m": {"r@1": {"done": None, "needed": 3}}})),
                                         "runs.m.r@1.done"),
                                        (json.dumps(_report(runs={"m": {"r@1": {"needed": 3}}})), "runs.m.r@1.done")])
def test_a_report_that_is_not_one_is_refused_and_nothing_is_written(tmp_path, bad, named):
    root = _board(tmp_path)                                   # never rendered: nothing to write over
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    report = tmp_path / "report.json"
    report.write_text(bad)
    with pytest.raises(ValueError, match=rf"report\.json.*{re.escape(named)}"):
        render(root, report=report)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="cannot read"):
        render(root, report=tmp_path / "missing.json")
    assert main(["leaderboard", "render", "--dir", str(root), "--report", str(report)]) == 2
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_entries_on_one_marker_share_one_label():
    """Three entries of one state size whose recall differs by less than a marker's width get one
    label naming all three (highest first) at their point; a fourth elsewhere keeps its own."""
    import pandas as pd

    from nlsearch.leaderboard.plots import DRAW, _figure
    rows = pd.DataFrame({"task_kind": ["recall"] * 4, "task": ["r@1"] * 4, "mean": [0.1224, 0.1256, 0.1225, 0.9],
                         "state_size": [262144, 262144, 262144, 10496],
                         "name": ["cms-steps", "transformer", "cms-steps-single", "linear-attention"]})
    fig, ax = _figure()
    DRAW["state"](ax, rows)
    labels = {t.get_text(): t.xy for t in ax.texts}
    assert labels == {"transformer\ncms-steps-single\ncms-steps": (262144, 0.1256), "linear-attention": (10496, 0.9)}


def test_markers_overlapping_through_a_chain_share_one_label():
    """a overlaps b and b overlaps c (0.8 of a marker's radius apart each), a and c do not touch (1.6):
    all three are one label, at the highest; d, far away, keeps its own."""
    from nlsearch.leaderboard.plots import _coincident, _figure

    fig, ax = _figure()
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    radius = 5.0
    x0, y0 = ax.transData.transform((50, 50))
    to_data = ax.transData.inverted()
    a, b, c = (tuple(to_data.transform((x0, y0 - k * 0.8 * radius))) for k in range(3))
    points = [(*c, "c"), (*a, "a"), (10, 90, "d"), (*b, "b")]
    merged = {"\n".join(n for _, _, n in group): group[0][:2] for group in _coincident(ax, points, radius)}
    assert set(merged) == {"a\nb\nc", "d"}
    assert merged["a\nb\nc"] == pytest.approx(a) and merged["d"] == (10, 90)


def test_a_task_whose_seed_failed_says_how_many_seeds_its_mean_has(tmp_path):
    """The protocol leaves a diverged seed out of the mean: that cell (and only it) shows "(2 of 3 seeds)"
    beside its mean ± std, in the README, the page and the printed table; an entry that ran fewer seeds,
    all completed, is not marked."""
    from nlsearch.leaderboard.table import display

    shaky = task_result("r@1", [0.4, 0.0, 0.6])
    failed = shaky.seeds[1].model_copy(update={"status": "failed: NonFiniteLossError at step 9", "metrics": {},
                                               "run": None})
    shaky = shaky.model_copy(update={"seeds": (shaky.seeds[0], failed, shaky.seeds[2])})
    root = tmp_path / "lb"
    store = Store(root)
    store.add(make_entry("shaky", {"r@1": shaky}))
    store.add(make_entry("steady", {"r@1": task_result("r@1", [0.3, 0.3, 0.3])}))
    store.add(make_entry("short", {"r@1": task_result("r@1", [0.2, 0.2])}))
    readme, page = render(root)
    text = readme.read_text()
    assert "| shaky | submission | 3 | 1,005 | 1,000 | 0.5000 ± 0.1414 (2 of 3 seeds; best) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | submission | " in line]
    assert "| 0.3000 ± 0.0000 (≈ best) |" in text and [" seeds" in row for row in rows] == [True, False, False]
    assert ">0.5000 ± 0.1414<span class=\"seeds\">2 of 3 seeds; best</span></td>" in page.read_text()  # own line
    shown = display(store.index(), "test@1", "tiny@1")
    assert list(shown["r@1 accuracy ↑"]) == ["0.5000 ± 0.1414 (2 of 3 seeds; best)", "0.3000 ± 0.0000 (≈ best)",
                                            "0.2000 ± 0.0000 (≈ best)"]   # 2 seeds: p 0.30 and 0.20 (df 1)


def test_the_length_plots_legend_lists_the_best_curve_first():
    """The legend reads top-down in the order of each entry's mean accuracy over the lengths, whatever
    order the index holds the entries in."""
    import json

    import pandas as pd

    from nlsearch.leaderboard.plots import DRAW, _figure
    curves = {"low": {1024: 0.2, 2048: 0.1}, "high": {1024: 0.9, 2048: 0.5}, "mid": {1024: 0.3, 2048: 0.6}}
    rows = pd.DataFrame({"task_kind": ["longctx"] * 3, "task": ["n@1"] * 3, "name": list(curves),
                         "metric": ["accuracy"] * 3, "per_length": [json.dumps(c) for c in curves.values()]})
    fig, ax = _figure()
    DRAW["length"](ax, rows)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["high", "mid", "low"]
    assert {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}["mid"] == [0.3, 0.6]


@pytest.mark.parametrize("bwts,zero_line", [((-0.9, -0.8, -0.35), False), ((-0.9, -0.2, 0.05), True)])
def test_the_continual_plot_spans_its_points_and_marks_zero_only_among_them(bwts, zero_line):
    """Entries that all forget are spread over the whole width (not crowded left of a stretched 0);
    the no-forgetting line is drawn where the points reach it."""
    import pandas as pd

    from nlsearch.leaderboard.plots import DRAW, _figure
    rows = pd.DataFrame({"task_kind": ["continual"] * 3, "name": ["a", "b", "c"],
                         "extra": [json.dumps({"bwt": b, "acc": 0.5 + b / 4}) for b in bwts]})
    fig, ax = _figure()
    DRAW["continual"](ax, rows)
    lo, hi = ax.get_xlim()
    assert (lo <= 0.0 <= hi) == zero_line
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.get_lines()) == zero_line
