"""A real headless Chromium for the tests that look at a page as a person does: its text, and a screenshot kept.

Screenshots are test artefacts: they go to $EVALUATOR_TEST_ARTIFACTS, else test-artifacts/ at the repository root
(git-ignored). Chromium is Debian's `chromium` (.ci/run installs it); a test that needs it is skipped without it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS_ENV = "EVALUATOR_TEST_ARTIFACTS"
_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")  # a console message, as Chromium logs it with --enable-logging
_BLOCKS = {"tr", "p", "div", "li", "h1", "h2", "h3", "h4", "header", "section", "table", "thead", "tbody", "tfoot"}


def artifacts_dir() -> Path:
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


class _Text(HTMLParser):
    """The rendered DOM's visible text, a line per row or block, cells separated by ' | '."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "template"):
            self._hidden += 1
        elif tag in ("td", "th") and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "template"):
            self._hidden -= 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._hidden and data.strip():
            self.parts.append(" ".join(data.split()))

    def text(self) -> str:
        lines = ("".join(self.parts)).splitlines()
        return "\n".join(line.strip(" |") for line in lines if line.strip(" |"))


def page_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return parser.text()


def render(url: str, screenshot: Path, wait_ms: int = 5000, size: tuple[int, int] = (1280, 900),
           timeout_s: float = 90.0, console: list | None = None) -> str:
    """Load `url` (a login may be in it: user:password@host) in headless Chromium, let its scripts run for
    `wait_ms` of page time, save a PNG screenshot and return the page's text; `console` gets the page's console
    messages (Chromium's log does not say their level)."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:  # its own profile: tests may run side by side
        out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--no-first-run", "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
                              f"--window-size={size[0]},{size[1]}",
                              f"--virtual-time-budget={wait_ms}", f"--screenshot={screenshot}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=timeout_s, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    if console is not None:
        console += [m.group(1) for m in map(_CONSOLE.search, out.stderr.splitlines()) if m]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG screenshot at {screenshot}"
    return page_text(out.stdout)
