"""maskclip-run --report: the HTML page of a run, opened offline in a real headless browser."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from maskclip_runtime import cli
from maskclip_runtime.present.report import write_report

pytest.importorskip("selenium.webdriver", reason="the report test drives chromium with selenium (dev extra)")

from headless_browser import needs_chromium, start_chromium  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = needs_chromium
EXAMPLES = sorted((cli.DEMO_DIR / "examples").glob("*.jpg"))


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, [*map(str, args), "--backend", "onnxruntime", "--device", "cpu"])
    return result.exit_code, result.stderr


def counts(browser) -> dict[str, int]:
    return {
        element.get_attribute("id").removeprefix("count-"): int(element.get_attribute("data-count"))
        for element in browser.find_elements(By.CSS_SELECTOR, "#counts .count")
    }


def shown_probabilities(browser) -> list[float]:
    return [float(cell.text) for cell in browser.find_elements(By.CSS_SELECTOR, "#results tbody td.prob")]


def test_report_shows_counts_identity_thumbnails_and_sorts_by_probability(browser, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out, report = tmp_path / "r.jsonl", tmp_path / "report.html"
    code, stderr = run_cli(*EXAMPLES, broken, "--json", out, "--overlays", tmp_path / "o", "--report", report)
    assert code == 1, stderr  # one file failed, the rest answered
    records = [json.loads(line) for line in out.read_text().splitlines()]
    answered = [r for r in records if "error" not in r]
    assert "1 failed (" in stderr and f"{sum(r['verdict'] == 'fake' for r in answered)} fake" in stderr

    browser.get(report.as_uri())
    assert counts(browser) == {
        "images": len(records),
        "real": sum(r["verdict"] == "real" for r in answered),
        "uncertain": 0,
        "fake": sum(r["verdict"] == "fake" for r in answered),
        "failed": 1,
    }
    assert browser.find_element(By.ID, "identity-model_id").text == answered[0]["model_id"]
    assert browser.find_element(By.ID, "identity-precision").text == answered[0]["precision"]
    assert browser.find_element(By.ID, "identity-backend").text == answered[0]["backend"]
    assert browser.find_element(By.ID, "identity-self_check").text == answered[0]["self_check"]
    assert browser.find_element(By.ID, "failures").text.count("broken.jpg") == 2  # the file and its error

    # Thumbnails are inline (no file or network reads), decoded by the browser, and show the overlay's
    # photo block (not its legend strip): the photo's own shape, never enlarged.
    images = browser.find_elements(By.CSS_SELECTOR, "#results img")
    assert len(images) == len(answered)
    for image, record in zip(images, answered, strict=True):
        assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert size == [min(160, record["width"]), min(160, record["height"])]

    in_run_order = [round(r["fake_prob"], 3) for r in answered]
    assert shown_probabilities(browser) == in_run_order
    header = browser.find_element(By.ID, "sort-prob")
    header.click()
    assert shown_probabilities(browser) == sorted(in_run_order, reverse=True)
    header.click()
    assert shown_probabilities(browser) == sorted(in_run_order)


def test_report_of_a_resumed_run_covers_the_earlier_answers(browser, tmp_path):
    out, report = tmp_path / "r.jsonl", tmp_path / "report.html"
    assert run_cli(*EXAMPLES[:1], "--json", out, "--report", report, "-q")[0] == 0
    code, stderr = run_cli(*EXAMPLES, "--json", out, "--report", report, "--resume", "-q")
    assert code == 0, stderr
    browser.get(report.as_uri())
    assert counts(browser)["images"] == len(EXAMPLES) == len(out.read_text().splitlines())
    assert len(shown_probabilities(browser)) == len(EXAMPLES)


def test_report_counts_calibrated_verdicts_and_escapes_file_names(browser, tmp_path):
    photo = tmp_path / "<i>x&amp;.jpg"
    shutil.copy(EXAMPLES[0], photo)
    base = {"width": 8, "height": 8, "mask_fraction": 0.0, "model_id": "m", "precision": "fp16", "ms": 1.0}
    records = [
        {**base, "path": str(photo), "fake_prob": 0.2, "calibrated_prob": 0.1, "verdict": "real"},
        {**base, "path": "b.jpg", "fake_prob": 0.55, "calibrated_prob": 0.5, "verdict": "uncertain"},
        {**base, "path": "c.jpg", "fake_prob": 0.6, "calibrated_prob": 0.52, "verdict": "uncertain"},
        {**base, "path": "d.jpg", "fake_prob": 0.99, "calibrated_prob": 0.97, "verdict": "fake"},
    ]
    write_report(records, tmp_path / "report.html")
    browser.get((tmp_path / "report.html").as_uri())
    assert counts(browser) == {"images": 4, "real": 1, "uncertain": 2, "fake": 1, "failed": 0}
    names = [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#results summary")]
    assert names == ["<i>x&amp;.jpg", "b.jpg", "c.jpg", "d.jpg"]  # shown as text, not markup
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 1  # only the readable file has one
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
