"""/health's decision (streams.worker.health_report), state by state: 200 only while the worker
holds its assignment, its topics exist, its fetch loop goes round (or a job in hand is within its
budget), and it is neither draining, crashed, stuck nor holding unanswered messages."""

from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.worker import WorkerState, health_report, job_budget_s

NOW = 10_000.0
SETTINGS = Settings(runtime={"health_stale_s": 30, "stage_timeout_s": 60})


def healthy() -> WorkerState:
    return WorkerState(
        started=NOW - 100,
        agent_running=True,
        assigned=True,
        partitions=["song.uploaded:0"],
        last_fetch=NOW - 1,
        topics_checked_at=NOW - 2,
    )


def test_a_consuming_worker_is_ready() -> None:
    assert health_report(healthy(), SETTINGS, NOW) == (True, [])


def test_an_empty_assignment_is_still_an_assignment() -> None:
    # More workers than partitions: a standby is a member of the group, not a broken worker.
    state = healthy()
    state.partitions = []
    assert health_report(state, SETTINGS, NOW)[0]


def test_a_worker_that_never_started_consuming_is_not_ready() -> None:
    ready, problems = health_report(WorkerState(started=NOW), SETTINGS, NOW)
    assert not ready
    text = " | ".join(problems)
    for expected in ("agent is not running", "no partition assignment", "not been confirmed"):
        assert expected in text
    assert "fetch loop has stalled" in text


def _broken(change: str) -> WorkerState:
    state = healthy()
    if change == "draining":
        state.draining = True
    elif change == "crashed agent":
        state.agent_running, state.agent_crashes = False, 1
    elif change == "revoked":
        state.assigned = False
    elif change == "topics missing":
        state.missing_topics = ["t.song.uploaded"]
    elif change == "broker unreachable":
        state.topic_error = "KafkaConnectionError: refused"
    elif change == "topic check stale":
        state.topics_checked_at = NOW - 31
    elif change == "fetch loop stalled":
        state.last_fetch = NOW - 31
    elif change == "stuck":
        state.stuck_since = NOW - 5
    elif change == "unanswered":
        state.unanswered = 1
    elif change == "wedged":
        state.job_in_hand = "job-1"
        state.job_started = NOW - job_budget_s(SETTINGS) - 1
        state.last_fetch = NOW - 10_000
    return state


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("draining", "draining"),
        ("crashed agent", "crashed 1 times"),
        ("revoked", "no partition assignment"),
        ("topics missing", "topics missing on the broker: t.song.uploaded"),
        ("broker unreachable", "could not be asked"),
        ("topic check stale", "not been confirmed recently"),
        ("fetch loop stalled", "fetch loop has stalled"),
        ("stuck", "past its timeout"),
        ("unanswered", "could not be answered"),
        ("wedged", "wedged"),
    ],
)
def test_each_way_of_not_really_consuming_is_503_with_its_reason(change: str, reason: str) -> None:
    ready, problems = health_report(_broken(change), SETTINGS, NOW)
    assert not ready
    assert len(problems) == 1 and reason in problems[0], problems


def test_a_rebalance_in_progress_is_not_ready() -> None:
    ready, problems = health_report(healthy(), SETTINGS, NOW, rebalancing=True)
    assert not ready and "rebalancing" in problems[0]


def test_a_long_job_in_hand_is_healthy_while_the_fetch_loop_waits() -> None:
    # A job of 50 minutes holds the agent; the consumer's fetch loop may wait behind it.
    state = healthy()
    state.job_in_hand = "long-1"
    state.job_started = NOW - 3000
    state.last_fetch = NOW - 3000
    assert health_report(state, Settings(runtime={"stage_timeout_s": 3600}), NOW) == (True, [])


def test_the_job_budget_covers_every_bounded_step() -> None:
    settings = Settings(
        runtime={"stage_timeout_s": 100, "transient_retries": 2}, broker={"send_retries": 1}
    )
    budget = job_budget_s(settings)
    assert budget >= 3 * settings.runtime.stage_timeout_s + 2 * settings.runtime.retry_backoff_max_s
    assert budget >= 3 * 2 * settings.broker.send_timeout_s
