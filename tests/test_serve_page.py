"""The web page at / in a real headless browser (Debian's chromium driven by selenium): pick a bundled
example, see the verdict, probability, overlay and legend that the API gives for the same file."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("fastapi", reason="maskclip-serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("selenium.webdriver", reason="the page test drives chromium with selenium (dev extra)")

from headless_browser import needs_chromium, start_chromium  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_process import EXAMPLES, post_image, start_server  # noqa: E402

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server():
    process, url = start_server("--backend", "onnxruntime", "--device", "cpu")
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.mark.parametrize("example", ["partially_edited.jpg", "real_photo.jpg"])
def test_page_shows_verdict_probability_overlay_and_legend(server, browser, example):
    path = next(p for p in EXAMPLES if p.name == example)
    status, record = post_image(server, path)
    assert status == 200

    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 20).until(expected_conditions.visibility_of_element_located((By.ID, "result")))

    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.get_attribute("data-verdict") == record["verdict"]
    assert verdict.text == ("Generated / edited" if record["verdict"] == "fake" else "Real")
    probability = browser.find_element(By.ID, "probability")
    assert float(probability.get_attribute("data-value")) == record["fake_prob"]
    assert probability.text == f"{100 * record['fake_prob']:.1f} %"
    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].complete", overlay))
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay)
    assert size == [record["width"], record["height"]]
    legend = browser.find_element(By.ID, "legend")
    assert legend.is_displayed() and "1.0" in legend.text
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_page_shows_the_servers_error_for_a_non_image(server, browser, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    status, answer = post_image(server, text)
    assert status == 415
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(text))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 20).until(lambda d: error.is_displayed())
    # The same refusal as the API's; only the name differs (the page uploads the file by name).
    assert error.text == answer["error"].replace("-: ", "notes.png: ", 1)
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_the_picker_keeps_working_for_one_file_after_another(server, browser):
    browser.get(server + "/")  # once: the files below are picked one after another on the same page
    for example in ("partially_edited.jpg", "real_photo.jpg", "partially_edited.jpg"):
        path = next(p for p in EXAMPLES if p.name == example)
        _, record = post_image(server, path)
        browser.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(browser, 20).until(
            lambda d, r=record: (
                d.find_element(By.ID, "probability").get_attribute("data-value") == str(r["fake_prob"])
                and d.find_element(By.ID, "result").is_displayed()
            )
        )
        assert "another image" in browser.find_element(By.ID, "drop").text
    logs = [entry for entry in browser.get_log("browser") if entry["source"] == "javascript"]
    assert logs == []


def test_page_says_the_demo_model_is_one(server, browser):
    browser.get(server + "/")
    banner = browser.find_element(By.ID, "demo")
    WebDriverWait(browser, 20).until(lambda d: banner.is_displayed())
    assert "Demonstration model" in banner.text and "not evidence" in banner.text
