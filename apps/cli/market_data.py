"""`engine market-data`: run the market-data service (live stop-losses from Kite's ticker), or print a
running one's health with `--status`."""

from __future__ import annotations

import argparse
import asyncio
import signal

from apps import market_data
from apps.cli.common import OK, UNAVAILABLE, Cli


def add_commands(groups: argparse._SubParsersAction) -> None:
    command = groups.add_parser(
        "market-data", help="run the market-data service: stop-losses from Kite's ticker (docs/operations.md)")
    command.add_argument("--status", action="store_true",
                         help="print a running service's health per account (from ENGINE_MARKET_DATA_METRICS_PORT)")
    command.set_defaults(run=run_market_data)


async def run_market_data(cli: Cli, args: argparse.Namespace) -> int:
    services = cli.services
    if args.status:
        try:
            lines = await asyncio.to_thread(market_data.status_lines, services.settings)
        except ConnectionError as error:
            cli.say(f"[red]error:[/red] {error}")
            cli.data({"error": str(error), "exit_code": UNAVAILABLE})
            return UNAVAILABLE
        for line in lines:
            cli.say(line)
        cli.data({"status": lines})
        return OK
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cli.say("market-data service running; Ctrl-C stops it")
    service = await market_data.serve(services.settings, services.store, services.starter, stop)
    cli.data({"health": service.health()})
    return OK
