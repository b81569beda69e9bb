"""The page of `fitgap serve` in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which `make test` installs when they are missing) against `python -m fitgap.serve`
started on a free loopback port. Upload the mini-benchmark's test images, wait for every result, and
check each verdict against the API's and the rendered heatmap."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from imaging import detector_ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minibench_test_images(tmp_path, per_family=1):
    """Real and fake test images of every family: the demo's mini-benchmark when it is built, else one
    built here with a few training steps (the same layout and families)."""
    from fitgap import minibench

    cache = os.path.join(ROOT, ".cache", "minibench")
    if not os.path.isfile(os.path.join(cache, "BUILT.json")):
        cache = minibench.build_minibench(str(tmp_path / "mb"), steps=2)
    out = []
    for fam in minibench.FAMILIES:
        for cls in ("0_real", "1_fake"):
            d = os.path.join(cache, "test", fam, cls)
            out += [os.path.join(d, f) for f in sorted(os.listdir(d))[:per_family]]
    return out


@pytest.fixture
def server(tmp_path):
    """A server on a small random detector with a calibration beside it; FITGAP_PAGE_CKPT serves another
    checkpoint instead (the README's screenshot shows the demo detector)."""
    ckpt = os.environ.get("FITGAP_PAGE_CKPT")
    if not ckpt:
        ckpt = str(tmp_path / "best.pt")
        detector_ckpt(ckpt, "resnet10t", 32, highpass=True)
        (tmp_path / "calibration.json").write_text(json.dumps(
            {"temperature": 1.0, "thresholds": {"fake": 0.6, "real": 0.4}, "targets": {"fpr": 0.01, "fnr": 0.05}}))
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "fitgap.serve", "--ckpt", ckpt, "--port",
                          str(port), "--device", "cpu"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        assert p.poll() is None, open(tmp_path / "server.log").read()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() - t0 < 120, "fitgap serve did not start"
        time.sleep(0.2)
    yield url
    p.terminate()
    p.wait(20)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "the page test needs Debian's chromium and chromium-driver (make test installs them: apt-get install "
        "chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
              "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_the_page_scores_the_uploaded_images_and_draws_their_heatmaps(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = minibench_test_images(tmp_path)
    api = {}
    for f in files:  # what the API answers for the same bytes, with the page's defaults (tiles, check on)
        r = httpx.post(server + "/v1/detect", params={"crop": "tiles"}, timeout=120,
                       files=[("files", (os.path.basename(f), open(f, "rb").read()))])
        assert r.status_code == 200
        api.setdefault(os.path.basename(f), []).append(r.json()["results"][0])
    drv = browser()
    try:
        drv.get(server + "/")
        WebDriverWait(drv, 60).until(lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "1")
        calibrated = httpx.get(server + "/v1/model").json()["calibration"] is not None
        assert ("UNCALIBRATED" in drv.find_element(By.ID, "model").text) is not calibrated
        drv.find_element(By.ID, "files").send_keys("\n".join(files))
        WebDriverWait(drv, 300).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == len(files) and all(
            c.get_attribute("data-state") != "scoring" for c in d.find_elements(By.CSS_SELECTOR, ".card")))
        cards = drv.find_elements(By.CSS_SELECTOR, ".card")
        for c in cards:
            name = c.get_attribute("data-name")
            assert c.get_attribute("data-state") == "done", c.text
            assert c.get_attribute("data-verdict") in {r["verdict"] for r in api[name]}, (name, c.text)
            assert c.find_element(By.CSS_SELECTOR, ".verdict").text.lower() == c.get_attribute("data-verdict")
            assert "P(fake)" in c.text and "PNG" in c.text
            canvas = c.find_element(By.TAG_NAME, "canvas")
            assert int(canvas.get_attribute("data-heatmap")) == len(api[name][0]["tiles"]) > 1
            # the overlay is drawn: most pixels differ from the image drawn alone at the same size
            changed = drv.execute_script(
                "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "const o = document.createElement('canvas'); o.width = c.width; o.height = c.height;"
                "const g = o.getContext('2d'); g.drawImage(c._bitmap, 0, 0, o.width, o.height);"
                "const e = g.getImageData(0, 0, o.width, o.height).data; let n = 0, k = 0;"
                "for (let i = 0; i < d.length; i += 4 * 7) { n++;"
                "  if (Math.abs(d[i] - e[i]) + Math.abs(d[i+1] - e[i+1]) + Math.abs(d[i+2] - e[i+2]) > 3) k++; }"
                "return k / n;", canvas)
            assert changed > 0.5, (name, changed)
        shot = str(tmp_path / "page.png")
        assert drv.save_screenshot(shot) and os.path.getsize(shot) > 10_000
        if os.environ.get("FITGAP_PAGE_SCREENSHOT"):  # the README's picture: FITGAP_PAGE_SCREENSHOT=docs/serve.png
            drv.set_window_size(1100, 760)
            drv.save_screenshot(os.environ["FITGAP_PAGE_SCREENSHOT"])
    finally:
        drv.quit()


def test_the_page_asks_for_the_token_when_the_server_needs_one(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    detector_ckpt(tmp_path / "best.pt", "resnet10t", 32, highpass=True)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "fitgap.serve", "--ckpt", str(tmp_path / "best.pt"), "--port",
                          str(port), "--device", "cpu", "--token", "page-test-token"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None and time.time() - t0 < 120
            time.sleep(0.2)
        drv = browser()
        try:
            drv.get(url + "/")
            box = drv.find_element(By.ID, "token-box")
            WebDriverWait(drv, 30).until(lambda d: box.is_displayed())
            assert "UNCALIBRATED" not in drv.find_element(By.ID, "model").text
            drv.find_element(By.ID, "token").send_keys("page-test-token")
            drv.find_element(By.ID, "token-save").click()
            WebDriverWait(drv, 30).until(
                lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "1")
            assert "UNCALIBRATED" in drv.find_element(By.ID, "model").text  # no calibration beside this one
        finally:
            drv.quit()
    finally:
        p.terminate()
        p.wait(20)
