"""The HTML report of a real tiny sweep and a run: every section, every image decodes, and a real browser shows it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from decaylab.files import read_jsonl
from decaylab.report import write_report
from decaylab.report.browser import BrowserUnavailable, capture, find_chromium
from decaylab.sweep import sweep
from tests.conftest import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP_SECTIONS = ["verdict", "u-curve", "samples", "learning", "norms", "steady", "gap", "table", "selection",
                  "audit", "provenance"]
SWEEP_FIGURES = {"fig-u_curve", "fig-learning_curves", "fig-weight_norms", "fig-layer_norms", "fig-steady_state",
                 "fig-gap"}
RUN_SECTIONS = ["verdict", "learning", "norms", "steady", "samples", "metrics", "audit", "provenance"]


class Page(HTMLParser):
    """Section ids, images (with their figure), the text of each section, table rows per section."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.text: dict[str, str] = {}
        self.links: list[str] = []
        self._figure = ""
        self._section = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "section" and "id" in found:
            self._section = found["id"]
            self.sections.append(self._section)
        if tag == "figure":
            self._figure = found.get("id", "")
        if tag == "img":
            self.images.append({"src": found.get("src", ""), "figure": self._figure, "section": self._section})
        for key in ("src", "href"):
            if key in found:
                self.links.append(found[key])

    def handle_data(self, data: str) -> None:
        if self._section:
            self.text[self._section] = self.text.get(self._section, "") + data


def decode_png(uri: str) -> np.ndarray:
    """The pixels of a data:image/png URI (signature checked first)."""
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(data), format="png")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-fold CV sweep (λ = 0, 1e-3, 1e-1; decoupled; BLEU computed) with its report."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    sweep(tiny_config("train.bleu_examples=4"), strategy="cv", folds=2, lambdas="1e-3,1e-1", modes="decoupled",
          rule="1se", output=out)
    write_report(out)
    return out


@pytest.fixture(scope="module")
def page(tiny_sweep: Path) -> Page:
    return Page((tiny_sweep / "report.html").read_text(encoding="utf-8"))


def test_sweep_report_has_every_section_and_names_the_chosen_lambda(tiny_sweep: Path, page: Page) -> None:
    assert page.sections == SWEEP_SECTIONS
    chosen = json.loads((tiny_sweep / "summary.json").read_text())["chosen"]
    verdict = " ".join(page.text["verdict"].split())
    headline = ("λ = 0: no weight decay is best" if chosen["lambda"] == 0
                else f"{chosen['mode']} λ = {chosen['lambda']:g}")
    assert headline in verdict
    assert "1-SE rule" in verdict and "mean ± SE over 2 folds" in verdict
    assert "final model on the test split" in verdict
    for words in ("validation loss (mean ± SE)", "Every trial", "largest λ within one standard error"):
        assert words in page.text["table"] + page.text["selection"]
    assert "data fingerprint" in page.text["provenance"] and "torch" in page.text["provenance"]
    steady = " ".join(page.text["steady"].split())  # one finding per λ
    assert "λ = 0 (no decay): no equilibrium predicted (λ = 0" in steady
    for lam in ("0.001", "0.1"):
        assert re.search(rf"decoupled λ = {lam}: (reached|not reached|too short to tell): over the last", steady)


def test_report_is_self_contained(tiny_sweep: Path, page: Page) -> None:
    html = (tiny_sweep / "report.html").read_text(encoding="utf-8")
    external = [link for link in page.links if not link.startswith(("data:", "#", "plots/"))]
    assert external == []
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"(https?:)?//", html)
    assert "url(http" not in html and "@import" not in html


def test_every_image_decodes_and_matches_its_png_file(tiny_sweep: Path, page: Page) -> None:
    assert {img["figure"] for img in page.images} == SWEEP_FIGURES
    for img in page.images:
        pixels = decode_png(img["src"])
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 500
        assert float(pixels[..., :3].std()) > 0.05  # not a blank canvas
        name = img["figure"].removeprefix("fig-")
        on_disk = (tiny_sweep / "plots" / f"{name}.png").read_bytes()
        assert on_disk == base64.b64decode(img["src"].split(",", 1)[1])


def test_tables_list_every_trial_and_setting(tiny_sweep: Path) -> None:
    html = (tiny_sweep / "report.html").read_text(encoding="utf-8")
    table = html[html.index('id="table"'):html.index('id="selection"')]
    trials = read_jsonl(tiny_sweep / "trials.jsonl")
    for row in trials:
        assert f">{row['trial']}<" in table
    assert table.count('class="chosen"') == 2 + 1  # two folds in the trial table, one setting row
    assert 'class="sortable"' in table


def test_samples_translate_the_same_sources_with_both_models(tiny_sweep: Path) -> None:
    html = (tiny_sweep / "report.html").read_text(encoding="utf-8")
    samples = html[html.index('id="samples"'):html.index('id="learning"')]
    roles = re.findall(r'<td class="role">([^<]*)</td>', samples)
    chosen = json.loads((tiny_sweep / "summary.json").read_text())["chosen"]
    other = f"chosen: decoupled λ = {chosen['lambda']:g}" if chosen["lambda"] > 0 else roles[3]
    assert roles[:4] == ["source 1", "reference", "λ = 0", other] and other.startswith(("chosen:", "best λ > 0:"))
    assert roles == roles[:4] + [r.replace("1", str(i)) if r == "source 1" else r for i in range(2, 6)
                                 for r in roles[:4]]


def test_audit_of_the_final_model(page: Page) -> None:
    text = " ".join(page.text["audit"].split())
    assert "Audit of the final model (final/)" in text
    assert "decay set no_bias_norm" in text and "every parameter (18 tensors)" in text


def test_run_report_through_the_cli(tiny_sweep: Path, cli) -> None:
    run = tiny_sweep / "trials" / "decoupled-0.1-p0.1-fold1"
    result = cli("report", str(run), "--samples", "3")
    assert result.code == 0
    assert f"wrote {run / 'report.html'}" in result.out
    run_page = Page((run / "report.html").read_text(encoding="utf-8"))
    assert run_page.sections == RUN_SECTIONS
    assert {img["figure"] for img in run_page.images} == {"fig-learning_curves", "fig-weight_norms",
                                                           "fig-layer_norms", "fig-steady_state"}
    for img in run_page.images:
        decode_png(img["src"])
    assert "decoupled λ = 0.1" in run_page.text["verdict"] and "source 3" in run_page.text["samples"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["layer_norms.png", "learning_curves.png",
                                                                  "steady_state.png", "weight_norms.png"]
    steady = " ".join(run_page.text["steady"].split())
    assert "this run:" in steady and "× its equilibrium value" in steady and "√(2λ/η)" in steady
    assert "steady state (rotational equilibrium)" in run_page.text["verdict"]


def test_a_rerun_removes_the_figures_it_no_longer_draws(tiny_sweep: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_sweep / "trials" / "decoupled-0.1-p0.1-fold1", run)
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "u_curve.png").write_bytes(b"stale")  # a sweep figure: a run report never draws it
    (run / "plots" / "mine.png").write_bytes(b"user")  # not a report figure: kept
    write_report(run, samples=1)
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["layer_norms.png", "learning_curves.png",
                                                                  "mine.png", "steady_state.png", "weight_norms.png"]


def test_unfinished_sweep_still_renders(tiny_sweep: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sweep, partial, ignore=shutil.ignore_patterns("final", "summary.json", "report.html",
                                                                       "plots"))
    page = Page(write_report(partial, samples=1).read_text(encoding="utf-8"))
    assert "No λ chosen yet" in page.text["verdict"]
    assert len(page.images) == 6


@pytest.mark.parametrize("args, message", [
    (["report", "no-such-folder"], "no-such-folder: folder not found"),
    (["report", "."], "neither a decaylab run folder (config.yaml) nor a sweep folder (sweep.yaml)"),
])
def test_bad_path_is_one_line_with_exit_code_2(args: list[str], message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    err = result.err
    assert result.code == 2 and message in err and len(err.strip().splitlines()) == 1


def _need_browser() -> None:
    """Skip without chromium, except under CI=true, where a missing browser is a failure."""
    try:
        find_chromium()
    except BrowserUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the browser test: {exc}; .ci/run installs it")
        pytest.skip(f"browser test needs headless Chromium: {exc}")


def test_report_in_a_real_browser(tiny_sweep: Path) -> None:
    _need_browser()
    shot = capture(tiny_sweep / "report.html")
    assert shot.errors == []
    assert shot.sections == SWEEP_SECTIONS
    pixels = imread(io.BytesIO(shot.png), format="png")[..., :3]
    assert pixels.shape[0] >= shot.height * shot.ratio - 2 and pixels.shape[0] > 3000  # the full page, not a viewport
    assert {img["id"] for img in shot.images} == SWEEP_FIGURES
    for img in shot.images:
        assert img["complete"] and img["natural_width"] > 0 and img["width"] > 300 and img["height"] > 150
        r = shot.ratio
        region = pixels[int(img["y"] * r):int((img["y"] + img["height"]) * r),
                        int(img["x"] * r):int((img["x"] + img["width"]) * r)]
        ink = (region.min(axis=2) < 0.85).mean()  # share of pixels that are not (near) white
        assert region.size and 0.02 < ink < 0.9, (img["id"], ink)
        assert float(region.std()) > 0.05, img["id"]


def test_browser_check_catches_a_broken_page(tmp_path: Path) -> None:
    _need_browser()
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><head><link rel="icon" href="data:,"></head><body><p>x</p>'
                    '<script>console.error("boom"); undefined_function();</script></body></html>', encoding="utf-8")
    errors = capture(page).errors
    assert any("boom" in e for e in errors) and any("undefined_function" in e for e in errors)
