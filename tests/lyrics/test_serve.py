"""`make serve` in a real browser: Debian's headless chromium driven by Selenium.

A photo uploaded -> the refiner's drawing, tags and timings; a question -> an answer; a REC question ->
the photo with the answer's box; a text file renamed .jpg -> a message; a second tab keeps its own photo.
The model is the untrained stage 2 that `make finetune --from-scratch` starts from, on a small random
LLaMA with SmolLM2's tokenizer: the page is what is tested, not the answers. The page after the REC
step is saved as {root}/pictures/serve_rec.png.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from lyrics.config import load_config
from tests.config_file import write_test_config
from tests.models import save_untrained_stage2, write_small_llm

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no headless browser here: `apt-get install chromium chromium-driver` (CI installs them) to run the web demo's test",
                allow_module_level=True)  # fmt: skip
WAIT = 240  # seconds: the first photo loads the four frozen models


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lyrics.serve import Demo, build

    root = tmp_path_factory.mktemp("serve")
    llm = write_small_llm(root / "llm")
    config = load_config(write_test_config(root, lambda raw: raw["profiles"]["tiny"]["llm"].update(checkpoint=str(llm))))
    result = save_untrained_stage2(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = build(Demo(config, result, "tiny"), []).queue()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}", config
    page.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(path))


def click_tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    tab = next(b for b in driver.find_elements(By.XPATH, f"//button[@role='tab' and contains(., '{label}')]") if b.is_displayed())
    driver.execute_script("arguments[0].click();", tab)


def type_into(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"{css} textarea")
    box.clear()
    box.send_keys(text, Keys.ENTER)


def test_a_photo_its_refiner_output_a_chat_and_a_rec_box_in_a_browser(server, browser, sample_dir, tmp_path):
    from selenium.webdriver.common.by import By

    url, config = server
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, sample_dir / "images" / "chelsea.jpg")
    wait_for(browser, lambda d: "Grounding-DINO" in text_of(d, "#timing"))
    assert "chelsea.jpg" in text_of(browser, "#timing") and "SAM-HQ" in text_of(browser, "#timing")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#refiner img"))

    type_into(browser, "#question", "What animal is this?")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat .message")) >= 2 or "(no answer)" in text_of(d, "#chat"))
    conversation = text_of(browser, "#chat")
    assert "What animal is this?" in conversation and conversation.split("What animal is this?", 1)[1].strip(), "an answer follows the question"

    click_tab(browser, "Find an object")
    type_into(browser, "#expression", "the cat")
    wait_for(browser, lambda d: text_of(d, "#rec-answer").startswith("Answer:"))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#rec img"))
    shot = config.path("{root}/pictures/serve_rec.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # A second tab has its own photo; the first keeps its own.
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, sample_dir / "images" / "astronaut.jpg")
    wait_for(browser, lambda d: "astronaut.jpg" in text_of(d, "#timing"))
    browser.close()
    browser.switch_to.window(first)
    click_tab(browser, "Chat")
    assert "chelsea.jpg" in text_of(browser, "#timing") and "What animal is this?" in text_of(browser, "#chat")


def test_a_text_file_named_jpg_gets_a_message(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = server
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are notes, not a photo\n")
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, fake)
    try:
        wait_for(browser, lambda d: "cannot be read as a photo" in d.find_element(By.TAG_NAME, "body").text, timeout=60)
    finally:
        browser.save_screenshot(str(tmp_path.parent / "text_file.png"))
    assert "notes.jpg cannot be read as a photo" in browser.find_element(By.TAG_NAME, "body").text
