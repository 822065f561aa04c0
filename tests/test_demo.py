"""The web demo (research/pmg/demo) on PMG-mini: its HTTP endpoints in-process against a real PMG, the page in
Debian's headless chromium, and ``python -m research.pmg.demo``.

The server runs in a thread of this process on a free port, over one PMG (models loaded and compiled once for
the module) that records what it answers, so the tests compare what the server and the page show with the
:class:`Personalized` objects themselves. The browser test saves a screenshot of the page after a request as a
test artifact: ``output/test-artifacts/demo.png`` under the repository, or ``$PMG_TEST_ARTIFACTS/demo.png``.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.pmg.api import PMG, RequestError
from research.pmg.errors import error_line
from research.pmg.images import load_rgb
from tests.subprocess_env import stage_env

REPO = Path(__file__).resolve().parents[1]
MINI = "configs/mini/pmg.yaml"
USER = "u001"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL_HINT = ("the browser test drives Debian's headless chromium through its chromedriver: install both with "
                "`apt-get install chromium chromium-driver` (scripts/run_tests.sh does so when run as root)")
GENERATE_TIMEOUT = 900  # s: only a bound for a broken page; the first request compiles the graphs (about a minute)


class RecordingPMG(PMG):
    """PMG that keeps every answer it gives, to compare with what the server sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers = []

    def personalize(self, *args, **kwargs):
        result = super().personalize(*args, **kwargs)
        self.answers.append(result)
        return result


@pytest.fixture(scope="module")
def demo(runtime, tmp_path_factory):
    from research.pmg.demo.server import DemoServer

    out = tmp_path_factory.mktemp("demo-output")
    pmg = RecordingPMG.from_config(REPO / MINI, [f"runtime.output_dir={out}"], runtime=runtime)
    server = DemoServer(pmg, ("127.0.0.1", 0), config=MINI, log=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=GENERATE_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def data_url_pixels(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB"))


def check_method(shown: dict, result) -> None:
    """One method's part of an answer is exactly ``result``: scores, the chosen one and every image's pixels."""
    assert shown["chosen"] == result.chosen
    assert len(shown["candidates"]) == len(result.candidates) > 0
    size = result.candidates[0].image.shape
    for got, want in zip(shown["candidates"], result.candidates):
        assert (got["k"], got["m"], got["w_p"], got["w_t"]) == (want.k, want.m, *want.weights)
        assert (got["d_p"], got["d_t"], got["z"], got["chosen"]) == (want.d_p, want.d_t, want.z, want.chosen)
        pixels = data_url_pixels(got["image"])
        assert pixels.shape == size
        np.testing.assert_array_equal(pixels, want.image)


# -------------------------------------------------------------------------------------------------------------------
# The HTTP endpoints
# -------------------------------------------------------------------------------------------------------------------
def test_world_page_and_item_images(demo):
    pmg = demo.pmg
    status, headers, page = get(demo.url)
    assert status == 200 and b'<script src="/static/demo.js"' in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("static/demo.js", "static/demo.css"):
        assert get(demo.url + asset)[0] == 200

    status, _, body = get(demo.url + "api/world")
    world = json.loads(body)
    assert status == 200 and world["scenario"] == "stickers" and world["soft_checkpoint"] == ""
    assert [item["id"] for item in world["items"]] == list(pmg.items)
    assert [user["id"] for user in world["users"]] == pmg.users()
    user = next(u for u in world["users"] if u["id"] == USER)
    sample = pmg.user_sample(USER)
    assert (user["history"], user["target"], user["conversation"]) == (list(sample.history), sample.target,
                                                                        list(sample.conversation))

    status, headers, png = get(demo.url + f"items/{sample.target}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
                                  np.asarray(load_rgb(pmg.image_path(sample.target))))
    status, _, body = get(demo.url + "items/no-such-sticker")
    assert status == 404 and json.loads(body)["error"] == "error: unknown item id 'no-such-sticker'"


@pytest.fixture(scope="module")
def answered(demo):
    """The demo's answer to the user's own sample, with the two Personalized objects behind it."""
    sample = demo.pmg.user_sample(USER)
    before = len(demo.pmg.answers)
    status, body = post(demo.url + "api/personalize", json.dumps(
        {"history": list(sample.history), "target": sample.target, "conversation": list(sample.conversation)}).encode())
    assert status == 200, body
    results = {r.method: r for r in demo.pmg.answers[before:]}
    assert sorted(results) == ["no_personalization", "pmg"]
    return sample, body, results


def test_a_request_answers_keywords_and_both_methods(answered):
    sample, body, results = answered
    pmg_result = results["pmg"]
    assert body["sample"] == sample.id and body["prepared"] is True and body["soft"] is pmg_result.soft is False
    assert [item["id"] for item in body["history"]] == list(sample.history)
    assert body["target"] == {"id": sample.target, "title": pmg_result.target.title}
    assert body["conversation"] == list(sample.conversation)
    assert body["preference_keywords"] == list(pmg_result.preference_keywords) != []
    assert body["target_keywords"] == list(pmg_result.target_keywords) != []
    for method, result in results.items():
        check_method(body["methods"][method], result)
    # the two methods' images differ, so an answer that swapped them would fail check_method above
    assert not np.array_equal(results["pmg"].image, results["no_personalization"].image)


def test_a_repeated_request_is_answered_from_memory(demo, answered):
    sample, body, _ = answered
    before = len(demo.pmg.answers)
    status, again = post(demo.url + "api/personalize", json.dumps(
        {"history": list(sample.history), "target": sample.target, "conversation": list(sample.conversation),
         "n": None}).encode())
    assert (status, again) == (200, body)
    assert len(demo.pmg.answers) == before


@pytest.mark.parametrize("body, expected", [
    (b'{"history": ["1f418"], "target": ', "error: request body: not valid JSON: line 1 column 34: Expecting value"),
    (b"\xff\xfe", "error: request body: not UTF-8 text"),
    (b'["1f418"]', "error: request body: must be a JSON object with ['history', 'target', 'conversation', 'n'], "
                   "got list"),
    (b'{"history": ["1f418"]}', "error: request body: missing field 'target'"),
    (b'{"history": ["1f418"], "target": "1f406", "user": "u001"}', "error: request body: unknown field 'user' "
                                                                   "(a request has ['history', 'target', "
                                                                   "'conversation', 'n'])"),
    (b'{"history": [{"title": "x", "image": "/etc/hostname"}], "target": "1f406"}',
     "error: history[0]: must be an item id (text), got {'image': '/etc/hostname', 'title': 'x'}"),
], ids=["cut-json", "not-utf8", "not-an-object", "no-target", "unknown-field", "free-item"])
def test_a_malformed_body_is_400_with_one_line(demo, body, expected):
    before = len(demo.pmg.answers)
    status, answer = post(demo.url + "api/personalize", body)
    assert (status, answer) == (400, {"error": expected})
    assert len(demo.pmg.answers) == before


@pytest.mark.parametrize("history, target", [(["1f418", "no-such-sticker"], "1f406"), (["1f418"], "1f418"),
                                             ([], "1f406"), (["1f418"], None)],
                         ids=["unknown-id", "target-in-history", "empty-history", "no-target"])
def test_a_request_the_api_refuses_is_400_with_its_one_line_message(demo, history, target):
    with pytest.raises(RequestError) as refused:
        demo.pmg.personalize(history, target)
    status, answer = post(demo.url + "api/personalize", json.dumps({"history": history, "target": target}).encode())
    if target is None:  # the demo takes ids only: it refuses before the API does
        assert (status, answer) == (400, {"error": "error: target: must be an item id (text), got None"})
    else:
        assert (status, answer) == (400, {"error": error_line(refused.value)})
        assert "\n" not in answer["error"] and answer["error"].startswith("error: ")


# -------------------------------------------------------------------------------------------------------------------
# The page in a real browser
# -------------------------------------------------------------------------------------------------------------------
ANSWERED = """
const error = document.getElementById('error');
if (!error.hidden) return 'error: ' + error.textContent;
return document.getElementById('result').hidden ? null : 'answered';
"""
LOADED = "return [...document.querySelectorAll('#result img')].every((img) => img.complete)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -r requirements-dev.txt")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage",
                 "--window-size=1400,1700", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # The driver named: Selenium Manager (which would download one) is never asked.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_in_headless_chromium(demo, browser, answered):
    """Pick a user, click Generate, wait until every image of the answer has loaded; the page shows the keywords,
    the non-personalized image and the PMG candidates of the user's sample, the chosen one framed. The
    screenshot goes to output/test-artifacts/demo.png (or $PMG_TEST_ARTIFACTS/demo.png). Then an empty history:
    the page shows the server's one-line refusal."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(demo.url)
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#user option")) > 1)
    Select(browser.find_element(By.ID, "user")).select_by_value(USER)
    sample, _, results = answered  # the same request: answered from memory, or again with the same images
    assert ([b.get_attribute("data-id") for b in browser.find_elements(By.CSS_SELECTOR, "#history .sticker")]
            == list(sample.history))
    browser.find_element(By.ID, "generate").click()
    state = WebDriverWait(browser, GENERATE_TIMEOUT).until(lambda d: d.execute_script(ANSWERED))
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(LOADED))
    artifacts = Path(os.environ.get("PMG_TEST_ARTIFACTS") or REPO / "output" / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(artifacts / "demo.png"))
    assert state == "answered", state
    loaded = browser.execute_script("return [...document.querySelectorAll('#result img')].map("
                                    "(img) => [img.alt, img.naturalWidth])")
    assert len(loaded) == len(sample.history) + 3 + len(results["pmg"].candidates)  # history, target, 2 chosen
    assert all(width > 0 for _, width in loaded), loaded  # every image decoded

    def texts(selector):
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, selector)]

    def sources(selector):
        return [e.get_attribute("src") for e in browser.find_elements(By.CSS_SELECTOR, selector)]

    assert texts("#preference-keywords .chip") == list(results["pmg"].preference_keywords) != []
    assert texts("#target-keywords .chip") == list(results["pmg"].target_keywords) != []
    shown = sources("#pmg-candidates img")
    assert len(shown) == len(results["pmg"].candidates)
    for url, candidate in zip(shown, results["pmg"].candidates):
        np.testing.assert_array_equal(data_url_pixels(url), candidate.image)
    [plain] = sources("#no-personalization img")
    np.testing.assert_array_equal(data_url_pixels(plain), results["no_personalization"].image)
    framed = browser.find_elements(By.CSS_SELECTOR, "#pmg-candidates .candidate")
    assert ["chosen" in card.get_attribute("class").split() for card in framed] == [
        c.chosen for c in results["pmg"].candidates]
    for card, c in zip(framed, results["pmg"].candidates):
        for name, value in (("w_p", f"{c.weights[0]:g}"), ("w_t", f"{c.weights[1]:g}"), ("d_p", f"{c.d_p:.4f}"),
                            ("d_t", f"{c.d_t:.4f}"), ("z", f"{c.z:.4f}")):
            assert f"{name} {value}" in card.text.splitlines(), (name, card.text)
    small = browser.execute_script("return [...document.querySelectorAll('#pmg-candidates img')].map("
                                   "(i) => [i.naturalWidth, i.width, getComputedStyle(i).imageRendering])")
    assert all(natural < width and rendering == "pixelated" for natural, width, rendering in small), small
    # no script error, refused load or blocked resource (the page's CSP allows only this server)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    browser.find_element(By.ID, "clear-history").click()
    browser.find_element(By.ID, "generate").click()
    error = WebDriverWait(browser, 60).until(lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e)
    with pytest.raises(RequestError) as refused:
        demo.pmg.personalize([], sample.target)
    assert error.text == error_line(refused.value)


# -------------------------------------------------------------------------------------------------------------------
# The command
# -------------------------------------------------------------------------------------------------------------------
def test_the_command_serves_the_page_and_stops_on_ctrl_c(demo, tmp_path):
    """``python -m research.pmg.demo --port 0`` names its address, serves the page and the world, and ends with
    exit code 0 on Ctrl-C; a taken port or a bad flag is one ``error:`` line and exit code 2."""
    env = stage_env()
    command = [sys.executable, "-m", "research.pmg.demo", "--set", f"runtime.output_dir={tmp_path / 'out'}"]
    port = demo.server_address[1]
    taken = subprocess.run([*command, "--port", str(port)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines()[-1] == (f"error: cannot listen on 127.0.0.1:{port}: "
                                                     "Address already in use")
    bad = subprocess.run([*command, "--port", "70000"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: --port 70000: must be from 0 to 65535 (see --help)"]

    server = subprocess.Popen([*command, "--port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # the first line, printed once the server listens
        assert line.startswith("PMG demo on http://127.0.0.1:"), (line, server.stderr.read() if not line else "")
        url = line.split()[3]
        assert get(url)[0] == 200
        status, _, body = get(url + "api/world")
        assert status == 200 and len(json.loads(body)["users"]) == len(demo.pmg.users())
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        assert server.stdout.read().strip() == "stopped"
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
