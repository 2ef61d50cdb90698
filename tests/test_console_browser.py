"""The officer console in a real browser: Playwright driving Debian's Chromium, headless.

An officer signs in, sees an alert appear in the live feed after it is written to the
store, opens it, records the control outcome, and sees it stored. Screenshots and the
measured feed latency are saved under ``.artifacts/`` (git-ignored).

Chromium comes from Debian (``deploy/console/install-browser.sh``, run here when the
browser is missing and we are root); Playwright's own browser download is never used.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_console_world import (
    EORI_X,
    OFFICE_A,
    PASSWORD,
    alert_for,
    declaration_for,
    live_server,
    open_console,
    score_for,
    seed_world,
)
from vigie.streams.console_app import create_app

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "deploy" / "console" / "install-browser.sh"
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "vigie-chromium-install.lock"


def _chromium() -> str | None:
    found = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    return found


def ensure_chromium() -> str:
    """Path of Debian's Chromium, installing it (as root) when missing; skip when that is impossible."""
    found = _chromium()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"chromium is not installed and installing it needs root: run sudo {INSTALL_SCRIPT}")
    with _INSTALL_LOCK.open("w") as lock:  # pytest-xdist workers may get here together
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _chromium() is None:
            result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
            if result.returncode != 0:
                pytest.fail(f"{INSTALL_SCRIPT} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    found = _chromium()
    if found is None:
        pytest.fail(f"{INSTALL_SCRIPT} ran but no chromium binary was found", pytrace=False)
    return found


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_an_officer_sees_a_new_alert_opens_it_and_records_the_outcome(browser: Any, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with open_console(tmp_path, poll_s=0.2) as (services, _):
        world = seed_world(services.store)
        services.start()  # the watcher thread, as `vigie console serve` runs it
        with live_server(create_app(services, manage_lifecycle=False)) as url:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(f"{url}/login")
            page.fill("#username", "ana")
            page.fill("#password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_url(f"{url}/alerts")
            page.wait_for_selector(f"#alert-{world.alert_a}")
            assert page.text_content("#feed-status") == "live"
            assert page.locator(f"#alert-{world.alert_b}").count() == 0  # office B is not ana's

            # The engine stores a new alert for ana's office: it must show up without a reload.
            declaration = declaration_for(OFFICE_A, EORI_X, 4242, hours=1.0)
            alert = alert_for(declaration, risk=0.97, eta_hours=3.0)
            services.store.write([declaration, score_for(declaration, alert), alert])
            services.store.flush()
            stored_at = time.monotonic()
            row = page.wait_for_selector(f"#alert-{alert.alert_id}", timeout=10_000)
            latency_s = time.monotonic() - stored_at
            assert row is not None and declaration.mrn in (row.text_content() or "")
            # Highest risk first: the new alert (0.97) heads the feed.
            assert page.get_attribute("#alerts-body tr:first-child", "data-alert-id") == alert.alert_id
            page.screenshot(path=str(ARTIFACTS / "console-feed.png"), full_page=True)

            page.click(f"#alert-{alert.alert_id} a.open-alert")
            page.wait_for_url(f"{url}/alerts/{alert.alert_id}")
            assert declaration.mrn in page.text_content("h1")
            assert "far below the reference" in page.text_content("ol.reasons")
            page.check("#positive")
            page.select_option("#infringement_type", "undervaluation")
            page.fill("#duty_recovered_eur", "640.5")
            page.fill("#tax_recovered_eur", "128.1")
            page.click("#record-outcome")
            page.wait_for_selector("#notice")
            assert page.text_content("#notice") == "Outcome recorded."
            assert "ana" in page.text_content("#outcomes")
            page.screenshot(path=str(ARTIFACTS / "console-outcome.png"), full_page=True)
            page.close()

        stored = services.store.query(
            "SELECT officer_id, controlled, positive, infringement_type, duty_recovered_eur, selection "
            f"FROM vigie.outcomes FINAL WHERE alert_id = '{alert.alert_id}'"
        )
        assert stored == [
            {
                "officer_id": "ana",
                "controlled": 1,
                "positive": 1,
                "infringement_type": "undervaluation",
                "duty_recovered_eur": 640.5,
                "selection": "engine_alert",
            }
        ]
        assert services.audit.verify().ok
    (ARTIFACTS / "console-browser.json").write_text(
        json.dumps({"alert_visible_after_store_s": round(latency_s, 3), "poll_s": 0.2}, indent=2)
    )
