"""`senseflow results report GRID`: one self-contained HTML page, checked in a real headless Chromium.

The browser is Debian's `chromium` (scripts/install-browser.sh, called by .ci/run) driven by Playwright's
Python API; without it the browser test skips and says why. The page must load with no console error, no
failed request and every image decoded.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import yaml

from senseflow.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from evals.sample_set import SampleSet
    from senseflow.run_folder import PREVIEW_SIDE, save_png

    tmp = tmp_path_factory.mktemp("report")
    results = tmp / "results"
    doc = {"grid": "rep", "allow_outside_results": True, "base": "digits-senseflow", "seeds": [0, 1],
           "overrides": {"train.iterations": 20, "train.log_every": 5, "train.checkpoint_every": 10,
                         "output.root": str(results / "runs")},
           "variants": [{"name": "SenseFlow"}, {"name": "w/o ISG <b>", "overrides": ["isg.enabled=false"]}]}
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["grid", "run", str(path), "--job", "smoke", "--executor", "debug", "--no-sync"]) == 0
    runs = sorted(p for p in (results / "runs" / "rep").iterdir() if (p / "config.yaml").is_file())
    rng = np.random.default_rng(0)
    prompts = ["a handwritten seven", "a handwritten two"]
    for run in runs:  # the smoke job trains nothing: give every run the images training and evaluation write
        save_png(run / "samples" / "final.png", rng.integers(0, 255, (16, 64, 1), dtype=np.uint8),
                 min_side=PREVIEW_SIDE)
        for name in ("preview", "teacher_preview"):
            SampleSet.from_arrays(run / "eval_samples" / name, rng.integers(0, 255, (2, 8, 8, 1), dtype=np.uint8),
                                  prompts, [0, 0])
    assert main(["results", "report", "rep", "--root", str(results)]) == 0
    return results / "reports" / "rep.html", len(runs)


def test_report_is_self_contained_and_complete(report):
    page, n_runs = report
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", html)  # nothing fetched
    assert "<script" not in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert html.count("alt=\"samples of") == n_runs == 4
    assert len(imgs) > n_runs + 1  # the curves too
    assert 'alt="teacher and configurations on the same prompts and seeds"' in html
    table = html[html.index('<table id="ablation">'):html.index("</table>")]
    assert "SenseFlow" in table and "w/o ISG &lt;b&gt;" in table  # names are escaped
    assert re.search(r"\d \[\d[^\]]*, \d[^\]]*\]", table)  # intervals over the two seeds
    assert "<b>" in table  # best per column
    assert html.count("<details>") == n_runs and "isg:" in html  # the resolved configs


def test_report_unknown_grid_is_one_line_exit_2(report, capsys):
    page, _ = report
    root = page.parent.parent
    assert main(["results", "report", "nope", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (scripts/install-browser.sh installs "
                                              "Debian's chromium)")
def test_report_loads_in_headless_chromium(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip extra `test`)")
    page_file, n_runs = report
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        # a fresh profile each time (Playwright passes it as --user-data-dir)
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(page_file.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            title = page.title()
            rows = page.locator("#ablation tbody tr").count()
        finally:
            browser.close()
    assert not problems, problems
    assert title == "SenseFlow results: rep" and rows == 2
    assert len(images) > n_runs and all(done and width > 0 for _, done, width in images), images
