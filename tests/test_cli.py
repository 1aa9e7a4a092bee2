"""The operator CLI: `main()` in-process (on its own thread and event loop, configured from the
environment like in production) against the real dev server, PostgreSQL and the paper broker."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from apps.cli.common import CONFLICT, FAILED, NOT_FOUND, OK, UNAVAILABLE, USAGE
from tests.fixtures.cli import Operator
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine

API_KEY = re.compile(r"kee_[0-9a-f]+_[A-Za-z0-9_\-]+")


async def user_with_account(engine: Engine, cli: Operator, name: str, paper_key: str) -> tuple[int, int, str]:
    """(user id, account id, API key) made through the CLI."""
    created = await cli("users", "create", name)
    assert created.code == OK, created.output
    api_key = API_KEY.search(created.output)
    assert api_key is not None, created.output
    user = await engine.store.user_by_api_key(api_key.group())
    assert user is not None and user.username == name
    token = engine.paper.login(paper_key)
    added = await cli(
        "accounts", "add", "--user", str(user.id), "--api-key", paper_key, "--api-secret", "paper-secret",
        "--access-token", token,
    )
    assert added.code == OK, added.output
    account_id = int(re.search(r"broker account (\d+)", added.output).group(1))  # type: ignore[union-attr]
    return user.id, account_id, api_key.group()


async def test_an_operator_sets_up_a_user_and_trades_through_the_cli(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    engine.paper.control.set_price("INFY", "1500.25")
    name = f"carol-{free_port()}"
    user_id, account_id, api_key = await user_with_account(engine, cli, name, "carol")

    created = await cli(
        "strategies", "create", "--user", str(user_id), "--account", str(account_id), "--name", "open-drive",
        "--symbol", "INFY", "--quantity", "6", "--entry", "09:20", "--exit", "15:10", "--stop-loss-pct", "1.5",
    )
    strategy_id = re.search(r"created strategy (\d+)", created.output).group(1)  # type: ignore[union-attr]
    started = await cli("strategies", "start", strategy_id)
    bought = await cli("order", "buy", strategy_id, "--wait", "--reason", "opening bell")
    workflow_id = f"order:{strategy_id}:1:entry"
    status = await cli("order", "status", workflow_id)
    again = await cli("order", "buy", strategy_id)
    cancel_late = await cli("order", "cancel", workflow_id)
    history = await cli("history", "--strategy", strategy_id)
    listing = await cli("strategies", "list", "--user", str(user_id))
    stopped = await cli("strategies", "stop", strategy_id, "--reason", "done for the day")

    assert created.code == OK and "STOPPED" in created.output
    assert started.code == OK and "RUNNING" in started.output and "strategy:" in started.output
    assert "09:20:00" in started.output and "active" in started.output
    assert bought.code == OK, bought.output
    assert workflow_id in bought.output and "FILLED" in bought.output and "1500.25" in bought.output
    assert status.code == OK and "FILLED" in status.output and "6 of 6" in status.output
    assert again.code == CONFLICT and "duplicate order" in again.output and workflow_id in again.output
    assert cancel_late.code == CONFLICT and "already ended as FILLED" in cancel_late.output
    assert history.code == OK and workflow_id in history.output and "SUCCESS" in history.output
    assert listing.code == OK and "open-drive" in listing.output and "LONG" in listing.output
    assert stopped.code == OK and "paused: strategy STOPPED: done for the day" in stopped.output
    strategy = await engine.store.get_strategy(int(strategy_id))
    assert (strategy.status, strategy.open_quantity, strategy.entry_price) == ("STOPPED", 6, Decimal("1500.25"))
    assert api_key not in (created.output + started.output + bought.output)
    assert len([order for order in engine.paper.control.orders() if order["api_key"] == "carol"]) == 1


async def test_a_refused_order_and_interventions(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    strategy = await engine.strategy("TCS", running=False)
    refused = await cli("order", "sell", str(strategy.id))
    await cli("strategies", "start", str(strategy.id))
    nothing_to_sell = await cli("order", "sell", str(strategy.id), "--wait", "--timeout", "20")
    await engine.store.mark_intervention(strategy.id, "partial fill: 3 of 10")
    listed = await cli("interventions", "list", "--user", str(strategy.user_id))
    cleared = await cli("interventions", "clear", str(strategy.id))

    assert refused.code == CONFLICT and f"engine strategies start {strategy.id}" in refused.output
    assert nothing_to_sell.code == FAILED and "INVALID" in nothing_to_sell.output
    assert "nothing to sell" in nothing_to_sell.output
    assert listed.code == OK and "partial fill: 3 of 10" in listed.output
    assert cleared.code == OK and not (await engine.store.get_strategy(strategy.id)).needs_intervention


async def test_errors_have_clear_messages_and_exit_codes(
    engine: Engine, engine_cli: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = engine_cli
    strategy = await engine.strategy("ITC")

    missing = await cli("strategies", "show", "99999999")
    unknown_order = await cli("order", "status", "order:99999999:1:entry")
    wrong_usage = await cli("order", "buy", "first")
    bad_time = await cli("strategies", "create", "--user", "1", "--account", "1", "--name", "x", "--symbol", "X",
                         "--quantity", "1", "--entry", "25:00")
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    unreachable = await cli("order", "buy", str(strategy.id))

    assert missing.code == NOT_FOUND and "strategy 99999999 does not exist" in missing.output
    assert unknown_order.code == NOT_FOUND and "no order" in unknown_order.output
    assert wrong_usage.code == USAGE and bad_time.code == USAGE
    assert unreachable.code == UNAVAILABLE and "Temporal is unreachable" in unreachable.output


async def test_an_emergency_stop_from_the_cli_stops_the_users_strategies(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    first = await engine.strategy("INFY", api_key="dave")
    second = await engine.strategy("TCS", api_key="dave")
    bystander = await engine.strategy("ITC", api_key="erin")

    no_scope = await cli("emergency-stop", "--reason", "what for")
    stopped = await cli("emergency-stop", "--user", str(first.user_id), "--reason", "feed is down")
    unknown_user = await cli("emergency-stop", "--user", "99999999")

    assert no_scope.code == USAGE
    assert stopped.code == OK, stopped.output
    assert f"user {first.user_id}'s strategies started" in stopped.output
    for strategy in (first, second):
        after = await engine.store.get_strategy(strategy.id)
        assert after.status == "STOPPED" and "feed is down" in (after.stop_reason or "")
    assert (await engine.store.get_strategy(bystander.id)).status == "RUNNING"
    assert unknown_user.code == NOT_FOUND and "user 99999999 does not exist" in unknown_user.output


async def test_an_operator_exits_what_a_partial_exit_left(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    strategy = await engine.strategy("INFY", quantity=10, api_key="exitcli")
    await (await engine.starter.place_buy_order(strategy)).result()
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"order_timeout_seconds": 1.0})
    engine.paper.control.set_fill(fill_ratio="0.5")
    await (await engine.starter.place_sell_order(strategy.id)).result()  # sells 5 of 10, the rest cancelled
    engine.parts.order_activities.settings = engine.settings
    engine.paper.control.set_fill(fill_ratio="1")

    sold = await cli("strategies", "exit", str(strategy.id), "--wait", "--timeout", "30")
    again = await cli("strategies", "exit", str(strategy.id))

    assert sold.code == OK, sold.output
    assert f"order:{strategy.id}:1:exit-5" in sold.output and "FILLED" in sold.output
    assert re.search(r"exit reason\s+│\s+MANUAL", sold.output), sold.output
    assert (await engine.store.get_strategy(strategy.id)).open_quantity == 0
    assert again.code == FAILED and "nothing to exit" in again.output
