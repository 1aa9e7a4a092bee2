"""Reconcile on demand and on a schedule: `engine reconcile`, the API route, and the per-account Schedule,
against the real dev server, PostgreSQL, a worker and the paper broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import ScheduleActionStartWorkflow

from apps.api.main import create_app
from apps.cli.common import FAILED, NOT_FOUND, OK
from dev.devserver import DevServer
from engine.market_hours import IST
from starter.schedules import AccountReconcileSchedules, reconcile_schedule_id
from tests.fixtures.cli import Operator
from tests.fixtures.temporal import Engine
from tests.test_api import api_user


@pytest.fixture
async def operator(
    engine: Engine, engine_db_url: str, engine_secret_key: str, temporal_server: DevServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Operator:
    monkeypatch.setenv("DATABASE_URL", engine_db_url)
    monkeypatch.setenv("ENGINE_SECRET_KEY", engine_secret_key)
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("ENGINE_TASK_QUEUE", engine.settings.task_queue)
    monkeypatch.delenv("ENGINE_PAYLOAD_CODEC_KEYS", raising=False)
    return Operator()


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine.settings, engine.client, engine.store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


# IST wall-clock times a reconcile Schedule fires at: 09:00, every 5 minutes 09:15-15:30, 15:45.
MARKET_MINUTES = range(9 * 60 + 15, 15 * 60 + 31, 5)
RECONCILE_TIMES = {(9, 0), (15, 45)} | {(minute // 60, minute % 60) for minute in MARKET_MINUTES}


def hand_order(engine: Engine, api_key: str) -> str:
    kite = engine.paper.kite(api_key)
    return kite.place_order("regular", "NSE", "INFY", "BUY", 3, "MIS", "MARKET", market_protection=-1)


async def test_engine_reconcile_prints_the_report_and_a_dry_run_says_so(engine: Engine, operator: Operator) -> None:
    _, account_id = await engine.account("acct1")
    hand = hand_order(engine, "acct1")

    dry = await operator("reconcile", "--account", str(account_id), "--dry-run")
    real = await operator("reconcile", "--account", str(account_id))
    missing = await operator("reconcile", "--account", "999999")

    assert dry.code == OK, dry.output
    assert f"account {account_id} (dry run):" in dry.output and "UNTAGGED_ORDER" in dry.output and hand in dry.output
    assert real.code == OK and f"account {account_id}: 0 matched, 0 repaired, 0 need a person" in real.output
    assert "POSITION_UNOWNED" in real.output
    assert missing.code == NOT_FOUND and "999999" in missing.output
    [latest, earlier] = await engine.store.reconcile_reports(account_id, limit=2)
    assert (latest["dry_run"], earlier["dry_run"]) == (False, True)
    assert latest["requested_by"].startswith("cli:")
    assert [o["order_id"] for o in engine.paper.control.orders()] == [hand]  # nothing placed


async def test_the_account_owner_and_admins_reconcile_through_the_api(engine: Engine, api: httpx.AsyncClient) -> None:
    owner, stranger = await api_user(engine, "owner1"), await api_user(engine, "other1")
    admin = await api_user(engine, "admin1", admin=True)
    hand = hand_order(engine, "owner1")
    path = f"/accounts/{owner.account_id}/reconcile"

    by_owner = await api.post(path, headers=owner.headers)
    by_admin = await api.post(path, params={"dry_run": "true"}, headers=admin.headers)
    by_stranger = await api.post(path, headers=stranger.headers)
    reports = await api.get(f"/accounts/{owner.account_id}/reconcile-reports", headers=owner.headers)

    assert by_owner.status_code == 200, by_owner.text
    report = by_owner.json()
    assert report["requested_by"] == f"api:{owner.user.username}" and not report["dry_run"]
    assert [line["broker_order_id"] for line in report["lines"] if line["finding"] == "UNTAGGED_ORDER"] == [hand]
    assert by_admin.status_code == 200 and by_admin.json()["dry_run"] is True
    assert by_stranger.status_code == 404
    assert f"broker account {owner.account_id} does not exist" in by_stranger.json()["detail"]
    assert reports.status_code == 200
    assert [r["report_id"] for r in reports.json()] == [by_admin.json()["report_id"], report["report_id"]]
    hidden = await api.get(f"/accounts/{owner.account_id}/reconcile-reports", headers=stranger.headers)
    assert hidden.status_code == 404


async def test_each_account_has_a_schedule_before_the_open_in_market_hours_and_after_the_close(
    engine: Engine, operator: Operator,
) -> None:
    _, account_id = await engine.account("acct1")
    identifier = reconcile_schedule_id(account_id)
    try:
        created = await operator("reconcile", "--account", str(account_id), "--schedule")
        again = await operator("reconcile", "--account", str(account_id), "--schedule")  # an update, not an error

        assert created.code == OK and again.code == OK, created.output + again.output
        described = await engine.client.get_schedule_handle(identifier).describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "ReconcileWorkflow"
        assert action.task_queue == engine.settings.task_queue
        # The next runs of a Monday-to-Friday day in IST: 09:00, every 5 minutes 09:15-15:30, 15:45.
        runs = [moment.astimezone(IST) for moment in described.info.next_action_times]
        assert len(runs) >= 5 and all(run.weekday() < 5 and run.second == 0 for run in runs)
        assert {(run.hour, run.minute) for run in runs} <= RECONCILE_TIMES
        assert described.schedule.spec.time_zone_name == "Asia/Kolkata"
        comments = {calendar.comment for calendar in described.schedule.spec.calendars}
        assert comments == {"before the open", "market hours", "after the close: the broker's end of day"}
    finally:
        await AccountReconcileSchedules(engine.client, engine.settings).delete(account_id)


async def test_a_reconcile_without_a_broker_session_says_to_log_in_again(engine: Engine, operator: Operator) -> None:
    _, account_id = await engine.account("acct1")
    engine.paper.control.expire_tokens()

    failed = await operator("reconcile", "--account", str(account_id))

    assert failed.code == FAILED, failed.output
    assert "re-login needed" in failed.output and f"account {account_id}" in failed.output
