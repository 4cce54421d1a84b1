"""Driving JupyterHub's progress page and JupyterLab from Playwright."""

from __future__ import annotations

import time

from playwright.sync_api import Error as PlaywrightError

from tests.browser.conftest import shot


def watch_progress(page, timeout: float = 60) -> str:
    """The progress log's text as it grows, until the page leaves the progress page."""
    seen = ""
    deadline = time.monotonic() + timeout
    while "/spawn-pending/" in page.url and time.monotonic() < deadline:
        try:
            text = page.locator("#progress-log").text_content(timeout=1000) or ""
        except PlaywrightError:
            break  # navigated away mid-read
        if len(text) > len(seen):
            seen = text
            shot(page, "03-progress")
        time.sleep(0.1)
    return seen


def run_cell(page, code: str) -> str:
    """Open a notebook from the JupyterLab launcher, run ``code``, return its output text."""
    page.locator(".jp-LauncherCard").filter(has_text="Python 3 (ipykernel)").first.click()
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    editor.wait_for()
    # typing before the kernel is connected leaves the cell unexecuted
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    editor.click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-OutputArea-output").first
    output.wait_for(timeout=60_000)
    return output.inner_text()
