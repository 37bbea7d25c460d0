"""Screenshot a dashboard page once it shows a round: `python -m tests.ops.screenshot URL OUT [ROUNDS]`.

Used to take docs/img/dashboard.png during a live simulated run (docs/operations.md).
"""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

from tests.ops.test_dashboard import CHROMIUM, CHROMIUM_ARGS


def main(url: str, out: str, rounds: int = 1) -> None:
    """Open `url`, wait until at least `rounds` rounds and an active round show, save a full-page PNG."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(url)
        page.wait_for_function(
            f"Number(document.body.dataset.rounds || 0) >= {rounds} && !!document.querySelector('.cell.training')",
            timeout=600_000,
            polling=1000,
        )
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
