"""Progress updates never stall the caller (the generation loop's event loop thread), and 100 % always lands."""

from __future__ import annotations

import threading

from pipeline import report


def test_progress_is_sent_off_the_calling_thread_and_the_final_update_waits(monkeypatch):
    monkeypatch.setattr(report, "in_prefect_run", lambda: True)
    sent: list[tuple[float, str]] = []
    api_answers = threading.Event()

    def slow_send(self, value: float) -> None:
        api_answers.wait(30)  # a Prefect API that has not answered yet
        sent.append((value, threading.current_thread().name))

    monkeypatch.setattr(report.Progress, "_send", slow_send)
    progress = report.Progress("unit-progress", min_interval_s=0.0)

    progress.update(10)
    progress.update(20)  # skipped: the 10 % update is still on its way
    assert sent == []  # both calls returned while the API still held the first update
    assert progress.value == 20
    api_answers.set()
    progress.update(100)  # waits for the queue: 100 % is on the server when update returns
    assert [value for value, _ in sent] == [10, 100]
    assert all(name.startswith("prefect-progress") for _, name in sent)


def test_progress_is_throttled_and_a_noop_outside_a_run(monkeypatch):
    sent: list[float] = []
    monkeypatch.setattr(report.Progress, "_send", lambda self, value: sent.append(value))
    monkeypatch.setattr(report, "in_prefect_run", lambda: False)
    progress = report.Progress("unit-progress-2", min_interval_s=60.0)
    progress.update(150)
    assert progress.value == 100.0 and sent == []

    monkeypatch.setattr(report, "in_prefect_run", lambda: True)
    progress.update(5)
    progress.update(6)  # within min_interval_s of the first
    progress.update(100)
    assert sent == [5, 100]
