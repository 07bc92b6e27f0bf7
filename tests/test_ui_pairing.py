"""The Control UI's pairing card in a real browser (SPEC 13, 15): the pending codes listed, the
Approve button approving one in the gateway's book."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Proc
from test_browser import browser, open_dashboard, save_screenshot, wait  # noqa: F401 (the fixture)
from test_cli_pairing import strangers

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_approve_a_pending_code_from_the_page(
    start_gateway: Callable[..., Proc],
    browser: WebDriver,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    code42, code43 = strangers(home, "42", "43")
    gw = start_gateway(home)
    open_dashboard(browser, gw)
    row_css = f"#pairing-pending tr[data-code='{code43}']"
    row = wait(browser, "the pending code", lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    assert "telegram bot1 43" in row[0].text  # type: ignore[index]
    assert "in 59 min" in row[0].text or "in 58 min" in row[0].text  # type: ignore[index]
    save_screenshot(browser, "control-ui-pairing.png", tmp_path)
    browser.find_element(By.CSS_SELECTOR, f"{row_css} button.approve").click()
    wait(browser, "the code to leave the list", lambda d: not d.find_elements(By.CSS_SELECTOR, row_css))
    approved = wait(browser, "the approved sender", lambda d: d.find_element(By.ID, "pairing-approved").text)
    assert "telegram bot1 43" in str(approved)
    listed = gw.http("GET", "/v1/pairing").json()
    assert [a["sender"] for a in listed["approvals"]] == ["43"]
    assert [p["code"] for p in listed["pending"]] == [code42]
    assert browser.find_elements(By.CSS_SELECTOR, f"#pairing-pending tr[data-code='{code42}']")


def test_an_approval_made_elsewhere_leaves_the_page_by_its_log_line(
    start_gateway: Callable[..., Proc],
    browser: WebDriver,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The card is read again on each `[ACCESS]` log line the page hears (not only every
    minute): a code approved from the CLI or the API leaves the open page."""
    home = tmp_path / "home"
    home.mkdir()
    [code] = strangers(home, "42")
    gw = start_gateway(home)
    open_dashboard(browser, gw)
    row_css = f"#pairing-pending tr[data-code='{code}']"
    wait(browser, "the pending code", lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    assert gw.http("POST", "/v1/pairing/approve", {"channel": "telegram", "code": code}).status_code == 200
    # Well inside the minute of the page's backstop refresh.
    WebDriverWait(browser, 20, poll_frequency=0.1).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, row_css), message="the approved code to leave the page"
    )
    assert "42" in browser.find_element(By.ID, "pairing-approved").text
