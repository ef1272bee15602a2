"""The page at `/`, in headless Chromium: pick models, send one prompt, see each answer stream side by side.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil

import openai
import pytest
from serve_support import tiny_server

selenium = pytest.importorskip("selenium", reason="the browser test needs `pip install selenium`")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="the browser test needs headless Chromium: apt-get install -y chromium chromium-driver",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("root"), api_key="k3y") as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_streams_the_base_model_and_each_chosen_adapter_side_by_side(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served.url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "error").text)  # without the key, listing models is refused
    browser.find_element(By.ID, "key").send_keys("k3y")
    browser.find_element(By.ID, "refresh").click()
    boxes = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input.model"))
    assert [b.get_attribute("value") for b in boxes] == ["tiny", "sql", "e2e"]
    for box in boxes:
        if not box.is_selected():
            box.click()
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("12")
    browser.find_element(By.ID, "prompt").send_keys("hello there")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: all(s.text.startswith("done") for s in d.find_elements(By.CSS_SELECTOR, ".status"))
               and len(d.find_elements(By.CSS_SELECTOR, ".status")) == 3)
    shown = {c.get_attribute("data-model"): c.find_element(By.CSS_SELECTOR, ".output").get_attribute("textContent")
             for c in browser.find_elements(By.CSS_SELECTOR, ".column")}
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="k3y", max_retries=0)
    for model in ("tiny", "sql", "e2e"):
        expected = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}],
                                                  max_tokens=12, temperature=0).choices[0].message.content
        assert shown[model] == expected, model
    assert len(set(shown.values())) == 3
