"""`bonefrac evaluate` on a set: results.txt starts with the verdict, the operating points carry Wilson CIs,
and report.html is one self-contained file that opens in a real browser with its verdict and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _models import FIXTURES, make_checkpoint

from bonefrac.evaluation.evaluate import evaluate

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    model = make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt")
    out = tmp_path_factory.mktemp("rep")
    return evaluate(FIXTURES, out, model=model, backend="torch", workers=1, progress=False), out


def test_results_txt_starts_with_the_verdict(report: tuple[dict, Path]) -> None:
    m, out = report
    first = (out / "results.txt").read_text().splitlines()[0]
    lo, hi = m["auc_ci95"]
    assert first == m["verdict"] and first.startswith(f"AUC {m['auc']:.2f}, 95% CI {lo:.2f}-{hi:.2f}")
    chance = lo <= 0.5 <= hi
    assert ("no evidence that the model discriminates on this set" in first) == chance
    assert json.loads((out / "metrics.json").read_text())["verdict"] == first


def test_operating_points_carry_wilson_cis(report: tuple[dict, Path]) -> None:
    m, out = report
    saved = json.loads((out / "metrics.json").read_text())["operating_points"]
    for name, s in saved.items():
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            if s[k] is not None:
                lo, hi = s[f"{k}_ci95"]
                assert lo <= s[k] <= hi
        row = next(line for line in (out / "results.txt").read_text().splitlines() if line.startswith(name))
        lo, hi = s["specificity_ci95"]
        assert f"{s['specificity']:.3f} ({lo:.2f}-{hi:.2f})" in row


def test_report_html_is_self_contained(report: tuple[dict, Path]) -> None:
    m, out = report
    text = (out / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(sources) == len(pngs) and "calibration.png" in pngs
    assert "Wilson 95% confidence intervals" in text and "seen by the model" in text


@pytest.mark.browser
def test_report_html_opens_in_chromium_with_its_verdict_and_plots(report: tuple[dict, Path]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    m, out = report
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page()
            page.route(
                "**/*", lambda r: r.abort() if not r.request.url.startswith(("file:", "data:")) else r.continue_()
            )
            page.goto((out / "report.html").as_uri())
            assert page.locator("#verdict").inner_text() == m["verdict"]
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == len(list(out.glob("*.png")))
            assert all(done and width >= 300 for done, width in sizes), sizes  # each plot decoded (>= 4 in x 100 dpi)
            assert page.locator("table").count() >= 3
        finally:
            browser.close()
