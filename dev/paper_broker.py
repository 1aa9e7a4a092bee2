"""`paper-broker`: Kite Connect v3 on localhost, for the demo and the tests.

    paper-broker --host 127.0.0.1 --port 8700 [--state-file data/paper.json] [--fill-delay 0.02] ...

Point the kiteconnect client at it with `KiteConnect(api_key, root="http://127.0.0.1:8700")`.
The control API is under /_sim/ (docs/paper-broker.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

import uvicorn

from brokers.paper.app import create_app, serve_config
from brokers.paper.orders import FillSettings
from brokers.paper.persistence import StateFileError
from brokers.paper.request_log import RATE_LIMIT_FIELDS, RateLimits
from brokers.paper.simulator import PaperBrokerConfig, RandomWalkSettings

# The environment keeps the secret out of the process list.
API_SECRET_VARIABLE = "PAPER_BROKER_API_SECRET"


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = FillSettings()
    parser = argparse.ArgumentParser(
        prog="paper-broker", description="A Kite Connect v3 paper broker on localhost (control API: /_sim/).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700, help="port to listen on (default 8700)")
    parser.add_argument("--state-file", type=Path,
                        help="keep the order book, accounts and tokens in this JSON file across restarts")
    parser.add_argument("--fill-delay", type=_non_negative, default=defaults.delay_seconds,
                        help="seconds before a marketable order fills (default %(default)s)")
    parser.add_argument("--partial-fills", type=int, default=defaults.partial_fills,
                        help="trades each fill is split into (default %(default)s)")
    parser.add_argument("--partial-interval", type=_non_negative, default=defaults.partial_interval_seconds,
                        help="seconds between the trades of one fill (default %(default)s)")
    parser.add_argument("--fill-ratio", type=_decimal, default=defaults.fill_ratio,
                        help="share of each order that fills, 0 to 1; below 1 the rest stays open (default 1)")
    parser.add_argument("--cash", type=_decimal, default=PaperBrokerConfig().cash,
                        help="opening cash of each new account in rupees (default %(default)s)")
    parser.add_argument("--token-lifetime", type=float, default=None,
                        help="access token lifetime in seconds (default: until 06:00 IST, like Kite)")
    parser.add_argument("--api-secret", default=os.environ.get(API_SECRET_VARIABLE),
                        help=f"verify login checksums against this secret, also read from ${API_SECRET_VARIABLE} "
                             "(default: accept any well-formed checksum)")
    limits = RateLimits()
    for name, what in (("orders_per_second", "order requests a second"),
                       ("orders_per_minute", "order requests a minute"),
                       ("orders_per_day", "order requests a day"),
                       ("quotes_per_second", "quote, ltp and ohlc requests a second"),
                       ("reads_per_second", "other GET requests a second")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(limits, name),
                            help=f"{what} per account before HTTP 429; 0 = no limit (default %(default)s)")
    parser.add_argument("--no-rate-limits", action="store_true", help="turn every rate limit off")
    parser.add_argument("--market-hours", action="store_true",
                        help="refuse orders (but AMOs) outside 09:15-15:30 IST on weekdays, as Kite does")
    parser.add_argument("--random-walk", action="store_true", help="move prices at random from the start")
    parser.add_argument("--random-walk-interval", type=float, default=RandomWalkSettings().interval_seconds,
                        help="seconds between random-walk steps (default %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.partial_fills < 1:
        parser.error("--partial-fills must be at least 1")
    if not 0 <= args.fill_ratio <= 1:
        parser.error("--fill-ratio must be from 0 to 1")
    return args


def config_from(args: argparse.Namespace) -> PaperBrokerConfig:
    return PaperBrokerConfig(
        fill=FillSettings(delay_seconds=args.fill_delay, partial_fills=args.partial_fills,
                          partial_interval_seconds=args.partial_interval, fill_ratio=args.fill_ratio),
        cash=args.cash,
        token_lifetime_seconds=args.token_lifetime,
        api_secret=args.api_secret,
        rate_limits=RateLimits.off() if args.no_rate_limits else RateLimits(
            **{name: getattr(args, name) for name in RATE_LIMIT_FIELDS}),
        state_file=args.state_file,
        market_hours=args.market_hours,
        random_walk=RandomWalkSettings(enabled=args.random_walk, interval_seconds=args.random_walk_interval),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config_from(args))
    except StateFileError as error:
        sys.exit(f"paper-broker: {error}")
    print(f"paper broker: Kite Connect v3 at http://{args.host}:{args.port} (control API under /_sim/)",
          flush=True)
    uvicorn.Server(serve_config(app, args.host, args.port, log_level=args.log_level)).run()


if __name__ == "__main__":
    main()
