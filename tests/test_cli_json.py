"""`--json` on every CLI command that prints data: one JSON document, the API's own field names, and
errors as `{"error", "exit_code"}` with the documented exit code."""

from __future__ import annotations

import json
from typing import Any

from apps.cli.common import CONFLICT, NOT_FOUND, OK
from apps.cli.main import _leaves, build_parser
from tests.fixtures.cli import Operator
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine


def document(output: str) -> Any:
    return json.loads(output)


def test_every_command_takes_json() -> None:
    commands = _leaves(build_parser())

    assert len(commands) >= 15
    assert all(any("--json" in action.option_strings for action in command._actions) for command in commands)


async def test_an_operator_scripts_the_cli_with_json(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    user = await cli("users", "create", f"dora-{free_port()}", "--json")
    assert user.code == OK, user.output
    created_user = document(user.output)
    assert set(created_user) == {"id", "name", "admin", "api_key"} and created_user["admin"] is False

    token = engine.paper.login("dora")
    account = document((await cli(
        "accounts", "add", "--user", str(created_user["id"]), "--api-key", "dora", "--api-secret", "paper-secret",
        "--access-token", token, "--json",
    )).output)
    assert account == {
        "id": account["id"], "user_id": created_user["id"], "broker": "kite", "has_access_token": True,
        "reconcile_scheduled": True,
    }
    await engine.client.get_schedule_handle(f"reconcile:{account['id']}").describe()  # it exists
    assert token not in json.dumps(account)

    made = await cli(
        "strategies", "create", "--user", str(created_user["id"]), "--account", str(account["id"]), "--name", "dora-1",
        "--symbol", "INFY", "--quantity", "3", "--entry", "09:20", "--stop-loss-price", "1450.5", "--json",
    )
    strategy = document(made.output)
    assert made.code == OK
    assert (strategy["status"], strategy["quantity"], strategy["entry_time"]) == ("STOPPED", 3, "09:20:00")
    assert strategy["stop_loss_price"] == "1450.50"

    listed = document((await cli("strategies", "list", "--user", str(created_user["id"]), "--json")).output)
    history = document((await cli("history", "--strategy", str(strategy["id"]), "--json")).output)
    missing = await cli("strategies", "show", "999999", "--json")

    assert [item["id"] for item in listed] == [strategy["id"]]
    assert history == {"items": [], "next_cursor": None}
    assert missing.code == NOT_FOUND
    assert document(missing.output) == {"error": document(missing.output)["error"], "exit_code": NOT_FOUND}
    assert "999999" in document(missing.output)["error"]


async def test_show_says_why_a_strategy_with_times_has_no_schedules(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    user = document((await cli("users", "create", f"eve-{free_port()}", "--json")).output)
    account = document((await cli(
        "accounts", "add", "--user", str(user["id"]), "--api-key", "eve", "--api-secret", "s", "--json",
    )).output)
    timed = document((await cli(
        "strategies", "create", "--user", str(user["id"]), "--account", str(account["id"]), "--name", "eve-1",
        "--symbol", "INFY", "--quantity", "1", "--entry", "09:20", "--json",
    )).output)
    untimed = document((await cli(
        "strategies", "create", "--user", str(user["id"]), "--account", str(account["id"]), "--name", "eve-2",
        "--symbol", "INFY", "--quantity", "1", "--json",
    )).output)

    timed_shown = await cli("strategies", "show", str(timed["id"]))
    untimed_shown = await cli("strategies", "show", str(untimed["id"]))

    assert "no entry or exit time" not in timed_shown.output
    assert f"engine strategies start {timed['id']}" in timed_shown.output
    assert "no schedules: the strategy has no entry or exit time" in untimed_shown.output


async def test_a_duplicate_user_or_strategy_is_a_conflict(engine: Engine, engine_cli: Operator) -> None:
    cli = engine_cli
    name = f"fay-{free_port()}"
    user = document((await cli("users", "create", name, "--json")).output)
    account = document((await cli(
        "accounts", "add", "--user", str(user["id"]), "--api-key", "fay", "--api-secret", "s", "--json",
    )).output)
    strategy = ["strategies", "create", "--user", str(user["id"]), "--account", str(account["id"]), "--name",
                "fay-1", "--symbol", "INFY", "--quantity", "1"]
    assert (await cli(*strategy)).code == OK

    same_user = await cli("users", "create", name)
    same_strategy = await cli(*strategy, "--json")

    assert same_user.code == CONFLICT and "is taken" in same_user.output
    assert same_strategy.code == CONFLICT
    assert document(same_strategy.output)["exit_code"] == CONFLICT
