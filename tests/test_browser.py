"""The Control UI in a real browser (SPEC 13): headless Debian Chromium driven by Selenium,
against a real gateway process on loopback.

Nothing is downloaded at run time: the driver path is passed explicitly, so Selenium Manager is
never asked for one. Every wait is a WebDriverWait on something the page shows, with generous
timeouts; the only figures asserted are the gateway's own (drain duration against its budget).
A screenshot of the page during the drain is saved per run under build/browser/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from helpers import Proc, console_texts, poll, stall

from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry, Payload
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.base import Claimed
from trio_gateway.storage.queue import DeliveryQueue

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "browser"
# Generous: the machine may be busy; the page shows these within a second when it is not.
WAIT_SECONDS = 60
DRAIN_SECONDS = 4
# The watchdog reports the stalled call after 1 s but leaves it running (recovery "none"), so the
# page shows it highlighted as stalled and it is still there to block the drain.
STALL_REPORTED_ONLY = {"thresholdSeconds": 1, "checkIntervalSeconds": 0.2, "recovery": {"model_call": "none"}}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them with apt)")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1300",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, what: str, check: Callable[[WebDriver], object]) -> object:
    def safely(d: WebDriver) -> object:
        try:
            return check(d)
        except WebDriverException:
            return False  # an element replaced while we looked: look again

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(safely, message=f"waiting for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def open_dashboard(driver: WebDriver, gw: Proc) -> None:
    code = gw.http("POST", "/v1/ui/codes", {}).json()["code"]
    driver.get(f"{gw.url}/ui#code={code}")
    wait(driver, "the dashboard", lambda d: text(d, "state") == "running")
    # The one-time code is gone from the address bar once used.
    assert "code=" not in driver.current_url


def save_screenshot(driver: WebDriver, name: str, tmp_path: Path) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path))
    shutil.copy(path, tmp_path / name)
    return path


def test_restart_from_the_page_shows_the_countdown_its_blocker_and_generation_2(
    start_gateway: Callable[..., Proc], browser: WebDriver, tmp_path: Path
) -> None:
    gw = start_gateway(drain={"timeoutSeconds": DRAIN_SECONDS}, stalledTaskDetection=STALL_REPORTED_ONLY)
    session = stall(gw)
    open_dashboard(browser, gw)
    assert text(browser, "generation") == "1"
    wait(browser, "the call highlighted as stalled", lambda d: d.find_elements(By.CSS_SELECTOR, "#work tr.stalled"))
    restart_from_the_page(browser)

    wait(browser, "the drain panel", lambda d: d.find_element(By.ID, "drain").is_displayed())
    blocker = wait(browser, "the blocker", lambda d: d.find_element(By.CSS_SELECTOR, "#blockers li.blocker").text)
    assert f"model_call in session {session}" in str(blocker)
    assert text(browser, "drain-budget") == f"{DRAIN_SECONDS:.1f} s"
    # The bar counts down: its width shrinks while the budget runs out.
    bar = browser.find_element(By.ID, "drain-bar")
    first = float(bar.get_attribute("style").split("width:")[1].split("%")[0])
    wait(
        browser,
        "the countdown to move",
        lambda d: (
            float(d.find_element(By.ID, "drain-bar").get_attribute("style").split("width:")[1].split("%")[0])
            < first - 5
        ),
    )
    shot = save_screenshot(browser, "control-ui-drain.png", tmp_path)
    print(f"\nscreenshot during the drain: {shot}")

    wait(browser, "generation 2", lambda d: text(d, "generation") == "2" and text(d, "state") == "running")
    assert not browser.find_element(By.ID, "drain").is_displayed()
    [bar_rect] = wait(browser, "the drain in the chart", lambda d: d.find_elements(By.CSS_SELECTOR, "rect.drain"))
    assert "timed-out" in bar_rect.get_attribute("class")
    waited = float(bar_rect.get_attribute("data-waited"))
    budget = float(bar_rect.get_attribute("data-budget"))
    # The point of the page: the restart took its budget, and not a second more (gateway's figure).
    assert budget == DRAIN_SECONDS
    print(f"\nrestart from the page with a stalled call: {waited:.3f} s against a {budget:g} s budget (chart)")
    assert budget <= waited < budget + 1.0
    assert "deadline reached, 1 unit(s) cut" in text(browser, "last-drain")
    assert gw.health() == {"status": "ok", "generation": 2}

    # A second stalled restart: the chart now has the first drain to compare against.
    stall(gw)
    wait(browser, "the new call highlighted as stalled", lambda d: d.find_elements(By.CSS_SELECTOR, "#work tr.stalled"))
    restart_from_the_page(browser)
    wait(
        browser,
        "the second drain's stalled blocker",
        lambda d: (
            d.find_element(By.ID, "drain").is_displayed() and d.find_elements(By.CSS_SELECTOR, "#blockers li.stalled")
        ),
    )
    save_screenshot(browser, "control-ui-drain-with-history.png", tmp_path)
    wait(browser, "generation 3", lambda d: text(d, "generation") == "3" and text(d, "state") == "running")
    assert len(browser.find_elements(By.CSS_SELECTOR, "rect.drain.timed-out")) == 2


def restart_from_the_page(browser: WebDriver) -> None:
    wait(browser, "the restart button", lambda d: d.find_element(By.ID, "restart").is_enabled())
    browser.find_element(By.ID, "restart").click()
    wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm-yes").is_displayed())
    assert "Restart the gateway?" in text(browser, "confirm-text")
    browser.find_element(By.ID, "confirm-yes").click()


def seed_dead_letter(home: Path, text: str) -> str:
    queue = DeliveryQueue(home / "delivery-queue", inline, EventLog())

    async def seed() -> str:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        entry_id = queue.new_id(now)
        entry = DeliveryEntry(
            entry_id, "manual", "console", "ops", None, "main", None, Payload(text), entry_id, now, now
        )
        await queue.enqueue(entry)
        claimed = await queue.claim(entry_id, now)
        assert isinstance(claimed, Claimed)
        await queue.dead_letter(claimed, "HTTP 404 recipient not found (seeded)", now)
        return entry_id

    return trio.run(seed)


def test_retry_a_dead_letter_from_the_page(
    start_gateway: Callable[..., Proc], browser: WebDriver, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    entry_id = seed_dead_letter(home, "sent again from the Control UI")
    gw = start_gateway(home)
    open_dashboard(browser, gw)
    row_css = f"#dead-letters tr[data-id='{entry_id}']"
    row = wait(browser, "the dead letter", lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    assert "HTTP 404 recipient not found (seeded)" in row[0].text  # type: ignore[index]
    save_screenshot(browser, "control-ui-dead-letter.png", tmp_path)
    browser.find_element(By.CSS_SELECTOR, f"{row_css} button.retry").click()
    wait(browser, "the dead letter to leave the list", lambda d: not d.find_elements(By.CSS_SELECTOR, row_css))
    poll("the retried delivery", lambda: any("sent again from the Control UI" in t for t in console_texts(home)), 30)
    assert "Dead letter retried by operator" in gw.log


def test_stop_from_the_page_asks_first_then_stops_the_gateway(
    start_gateway: Callable[..., Proc], browser: WebDriver, tmp_path: Path
) -> None:
    gw = start_gateway()
    open_dashboard(browser, gw)
    browser.find_element(By.ID, "stop").click()
    wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm-no").is_displayed())
    assert "Stop the gateway?" in text(browser, "confirm-text")
    browser.find_element(By.ID, "confirm-no").click()
    wait(browser, "the dialog to close", lambda d: not d.find_element(By.ID, "confirm").is_displayed())
    assert gw.health()["status"] == "ok"  # cancelled: nothing asked of the gateway
    assert gw.popen.poll() is None
    browser.find_element(By.ID, "stop").click()
    wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm-yes").is_displayed())
    browser.find_element(By.ID, "confirm-yes").click()
    assert gw.popen.wait(WAIT_SECONDS) == 0
    wait(browser, "the page to see it gone", lambda d: text(d, "state") in ("offline", "stopped"))
    assert "[SHUTDOWN] Shutdown completed cleanly" in gw.log


def test_channel_accounts_render_with_paused_ones_highlighted(
    start_gateway: Callable[..., Proc], browser: WebDriver
) -> None:
    """The `channels` list of SPEC 11's status, fed to the page's own renderer (the gateway in
    this test has no listening accounts): one script call renders and reads back, so the next
    live snapshot cannot race the assertion."""
    gw = start_gateway()
    open_dashboard(browser, gw)
    status = gw.http("GET", "/v1/status").json() | {
        "channels": [
            {"channel": "telegram", "accountId": "bot1", "inbound": {"mode": "poll", "state": "listening",
             "lastMessageAgeSeconds": 4.2, "messages": 17}},
            {"channel": "openclaw-weixin", "accountId": "wx", "inbound": {"mode": "poll", "state": "paused",
             "lastMessageAgeSeconds": None, "messages": 0}},
        ]
    }  # fmt: skip
    rows = browser.execute_script(
        "render(arguments[0]);"
        "const card = document.getElementById('channels-card');"
        "return [!card.hidden, [...document.querySelectorAll('#channels tr')].map(r => [r.className, r.innerText])];",
        status,
    )
    visible, table = rows
    assert visible
    assert [cls for cls, _ in table] == ["", "stalled"]
    assert "telegram\tbot1\tpoll\tlistening\t17\t4.2 s ago" in table[0][1]
    assert "openclaw-weixin\twx\tpoll\tpaused" in table[1][1]
