"""The inspection console in a real browser: Debian's Chromium driven by Playwright (no browser download)."""

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.images import encode, part_png
from bench.servers import running_server
from service.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_explain_in_api_response(client):
    r = client.post("/v1/models/parts/inspect?explain=true", content=part_png(31, defect="spot"),
                    headers={"content-type": "image/png"})
    assert r.status_code == 200
    ex = r.json()["explanation"]
    assert ex["regions"] and ex["regions"][0]["kind"] in ("novel", "misplaced")
    region = ex["regions"][0]
    # base64 PNG crops of good parts where each latent fires: there are some for a latent good parts use, none for
    # one they never fire (a defect's own latent can be that)
    assert region["unusual"] and all(bool(u["atlas"]) == (u["good_rate"] > 0) for u in region["unusual"])
    assert region["expected"] and all(e["atlas"] for e in region["expected"])
    assert 0 < region["error_share"] <= 1


def test_console_is_served_without_a_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "SAE Inspect" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert client.get("/static/app.js").status_code == 200
    csp = page.headers["content-security-policy"]  # no inline script, even if markup were injected
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "innerHTML" not in client.get("/static/app.js").text.split("no innerHTML")[1]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' not installed (.ci/run installs it)")
def test_console_in_headless_chromium(models_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    name = '<img src=x onerror="window.__pwned=1">.png'  # a crafted upload name
    image = tmp_path / name
    image.write_bytes(part_png(32, defect="scratch"))
    tall = tmp_path / "tall.png"
    tall.write_bytes(encode(Image.fromarray(np.full((1263, 500, 3), 140, np.uint8)), "PNG"))
    feedback = tmp_path / "feedback"
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0, feedback_dir=feedback,
                        operator_key="op-key")
    with running_server(settings) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1200})
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#verdict:has-text('ANOMALOUS')", timeout=60_000)
            assert page.evaluate("document.getElementById('overlay').complete && "
                                 "document.getElementById('overlay').naturalWidth > 0")
            assert page.locator(".box").count() >= 1
            assert page.locator(".region").count() >= 1
            assert page.evaluate("window.__pwned") is None  # the name never ran as markup...
            assert name in page.inner_text("#recent figcaption")  # ...and shows as text
            page.fill("#opacity", "20")
            page.dispatch_event("#opacity", "input")
            assert page.evaluate("getComputedStyle(document.getElementById('overlay')).opacity") == "0.2"
            # the operator confirms the defect: the image is filed and counted
            page.fill("#operator-key", "op-key")
            page.click("#fb-defect")
            page.wait_for_selector("#fb-status:has-text('filed as defect')", timeout=30_000)
            filed = list((feedback / "parts" / "defect").glob("*.png"))
            assert len(filed) == 1 and filed[0].read_bytes() == image.read_bytes()
            assert 'sae_inspect_feedback_total{label="defect",model="parts",verdict="anomalous"} 1.0' in \
                httpx.get(url + "/metrics").text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            # a tall part (500 x 1263) fits the viewport
            page.set_input_files("#file", str(tall))
            page.wait_for_selector("#recent figcaption:has-text('tall.png')", timeout=60_000)
            assert page.evaluate("document.getElementById('photo').getBoundingClientRect().height") <= 1200
            page.goto(url + "/#model")
            page.wait_for_selector("#card td")
            assert "Calibration images" in page.inner_text("#card")
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' not installed (.ci/run installs it)")
def test_docs_render_with_the_network_unreachable(models_dir):
    """Swagger UI comes from the swagger-ui-bundle package: every request other than to the server is
    blocked, the page renders, and 'Try it out' on inspect offers a file upload."""
    sync_api = pytest.importorskip("playwright.sync_api")
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0)
    with running_server(settings) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        blocked: list[str] = []

        def route(r) -> None:
            if r.request.url.startswith(url):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        try:
            page = browser.new_page()
            page.route("**/*", route)
            page.goto(url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "SAE Inspect" in page.inner_text(".swagger-ui .info .title")
            page.locator('.opblock-summary-path[data-path="/v1/models/{name}/inspect"]').click()
            page.get_by_role("button", name="Try it out").first.click()
            page.wait_for_selector('.opblock.is-open input[type="file"]', timeout=10_000)
        finally:
            browser.close()
    assert blocked == [], blocked
