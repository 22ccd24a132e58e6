"""The review page in a real headless Chromium (issue 17 item 4): load the grid, click 👍 and
👎, rate with a keyboard shortcut, undo, reload and find the ratings persisted.

Debian's `chromium` driven by Playwright for Python (`executable_path`: Playwright cannot
download its own browser here). A screenshot is kept in test-artifacts/ (or
$GENFORGE_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from genforge_operator.review.journal import Journal
from genforge_operator.review.server import ReviewApp

from .helpers import ThreadServer, write_samples

sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(os.environ.get("GENFORGE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")


def _chromium() -> str:
    path = os.environ.get("GENFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    return path


@pytest.fixture
def browser():
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def _ratings(page) -> dict[str, str]:
    cards = page.locator(".card")
    return {cards.nth(i).get_attribute("data-file"): cards.nth(i).get_attribute("data-rating")
            for i in range(cards.count())}


def test_rate_with_clicks_and_keys_undo_and_reload(tmp_path, browser):
    folder = tmp_path / "review"
    write_samples(folder, per_label=3)
    server = ThreadServer(ReviewApp(folder, default_rater="ann"))
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.goto(server.url + "/")
        page.wait_for_selector(".card img")
        assert page.locator(".card").count() == 6
        assert page.locator("#model").text_content() == "shapes:v1"
        assert page.locator("#rater").input_value() == "ann"
        # Every image loaded (naturalWidth > 0): served from the folder, through the CSP.
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth === 16)")

        page.get_by_role("button", name="thumbs up sample-0000.png").click()
        page.wait_for_selector('.card[data-file="sample-0000.png"][data-rating="up"]')
        page.get_by_role("button", name="thumbs down sample-0001.png").click()
        page.wait_for_selector('.card[data-file="sample-0001.png"][data-rating="down"]')
        # After a rating the selection moves on: sample 2 is selected; "y" rates it 👍, then "2" rates 3 👎.
        assert page.locator(".card.selected").get_attribute("data-file") == "sample-0002.png"
        page.keyboard.press("y")
        page.wait_for_selector('.card[data-file="sample-0002.png"][data-rating="up"]')
        page.keyboard.press("2")
        page.wait_for_selector('.card[data-file="sample-0003.png"][data-rating="down"]')
        assert page.locator("#total-up").text_content() == "2"
        assert page.locator("#total-down").text_content() == "2"
        circle = page.locator('#counts tr[data-label="circle"] td')
        assert [circle.nth(i).text_content() for i in range(3)] == ["circle", "2", "0"]

        page.keyboard.press("z")  # undo the last rating (sample 3)
        page.wait_for_selector('.card[data-file="sample-0003.png"][data-rating=""]')
        page.get_by_role("button", name="↶ undo").click()  # and the one before it (sample 2)
        page.wait_for_selector('.card[data-file="sample-0002.png"][data-rating=""]')
        assert page.locator("#total-up").text_content() == "1"

        page.reload()
        page.wait_for_selector('.card[data-file="sample-0000.png"][data-rating="up"]')
        assert _ratings(page) == {"sample-0000.png": "up", "sample-0001.png": "down", "sample-0002.png": "",
                                  "sample-0003.png": "", "sample-0004.png": "", "sample-0005.png": ""}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
        assert (ARTIFACTS / "review-page.png").stat().st_size > 1000
        assert not problems, problems
    finally:
        server.close()
    standing = Journal(folder / "ratings.jsonl").current()
    assert {image: r["rating"] for (image, _), r in standing.items()} == {"sample-0000.png": "up",
                                                                          "sample-0001.png": "down"}


def test_fine_tune_button_shows_the_created_run_and_its_progress(tmp_path, browser):
    from genforge_operator.review.finetune import FineTuneRequest

    from .test_server import FakeFineTunes

    folder = tmp_path / "review"
    write_samples(folder, per_label=2)
    fake = FakeFineTunes()
    offer = FineTuneRequest(namespace="team-a", model="shapes", version="v1", dataset="shapes",
                            feedback_uri=f"file://{folder}/ratings.jsonl")
    server = ThreadServer(ReviewApp(folder, finetune=offer, cluster=lambda: fake, default_rater="ann"))
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector(".card img")
        page.get_by_role("button", name="thumbs up sample-0000.png").click()
        page.get_by_role("button", name="thumbs down sample-0002.png").click()
        page.wait_for_selector('.card[data-file="sample-0002.png"][data-rating="down"]')
        page.get_by_role("button", name="fine-tune on these ratings").click()
        page.wait_for_selector("#finetune-progress:has-text('step 3/60')")
        assert "created FineTune team-a/shapes-v1-feedback" in page.locator("#message").text_content()
        assert "method: preference" in page.locator("#finetune-status pre").text_content()
        assert len(fake.created) == 1
    finally:
        server.close()
