"""How a job's report learns that a dashboard watched it: the running dashboard holds the broker's dashboard lease."""
from __future__ import annotations

import time

from orchestrator.dashboard import linked_from_reports
from orchestrator.reporting.data import dashboard_links
from tasks.state import JobState


def test_a_running_dashboard_is_on_record_until_it_stops_and_a_second_one_is_not(redis_url, capsys):
    state = JobState.open(redis_url)
    assert state.dashboard() is None
    before = time.time()
    with linked_from_reports(state, "http://127.0.0.1:5555/"):
        record = state.dashboard()
        assert record["url"] == "http://127.0.0.1:5555/" and before <= record["since"] <= time.time()
        with linked_from_reports(state, "http://127.0.0.1:6666/"):
            assert state.dashboard()["url"] == "http://127.0.0.1:5555/"
        note = capsys.readouterr().err
        assert "job reports link to the dashboard that was here first, http://127.0.0.1:5555/" in note
        assert state.dashboard()["token"] == record["token"]  # the second one's end left the first one's record
    assert state.dashboard() is None


def test_the_report_links_only_a_dashboard_that_watched_the_whole_job():
    board = {"url": "http://head:5555", "since": 100.0}
    assert dashboard_links(board, "20250101-120000-ab12cd", 101.0) == {
        "url": "http://head:5555/", "tasks": "http://head:5555/tasks", "search": "20250101-120000-ab12cd",
        "api": "http://head:5555/api/tasks?search=20250101-120000-ab12cd"}
    assert dashboard_links(board, "j", 99.0) is None  # started after the job's submit: it missed the start
    assert dashboard_links(None, "j", 101.0) is None
