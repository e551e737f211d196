"""The live progress bar on stderr: images inferred, images/s, ETA."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:6.1f} img/s" if task.speed else "   -- img/s")


class JobProgress:
    """Follows a job summary (images_inferred, shards_done, status) on stderr."""

    def __init__(self, job_id: str, total: int, console: Console | None = None):
        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("images"), RateColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=self.console, transient=False)
        self.task = self.progress.add_task(job_id, total=total, status="queued")
        self.total = total

    def __enter__(self) -> "JobProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def say(self, line: str) -> None:
        """One line above the bar (the bar stays)."""
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def broker_wait(self, seconds: float) -> None:
        """The bar's status while the broker does not answer."""
        self.progress.update(self.task, status=f"broker unreachable for {seconds:.0f} s, retrying")

    def update(self, summary: dict) -> None:
        done = min(int(summary.get("images_inferred", 0)), self.total)
        status = summary.get("status", "")
        if status in ("done", "reducing"):
            done = self.total if status == "done" else max(done, int(summary.get("images_done", 0)))
        shards = f"{summary.get('shards_done', 0)}/{summary.get('n_shards', '?')} shards, {status}"
        self.progress.update(self.task, completed=done, status=shards)
