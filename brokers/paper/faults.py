"""Faults injected through the control API: latency, error answers, rejections, lost answers.

A fault names a route (or `*`) and how many requests it hits (`count`; None = until cleared).
Latency faults add up and let the request go on; of the other kinds, the oldest matching one wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from brokers.paper.errors import ControlInputError, GeneralError, KiteError, NetworkError, RateLimitError

ROUTES = (
    "place_order", "modify_order", "cancel_order", "orders", "order_history", "trades", "order_trades",
    "positions", "holdings", "quote", "ltp", "ohlc", "profile", "margins", "session",
)
ORDER_ROUTES = frozenset({"place_order", "modify_order", "cancel_order"})
ALL_ROUTES = "*"

# Per kind, the parameters it takes beside kind, route and count.
KIND_PARAMETERS: dict[str, frozenset[str]] = {
    "latency": frozenset({"seconds"}),
    "http_500": frozenset({"message"}),
    "http_502": frozenset({"message"}),
    "http_503": frozenset({"message"}),
    "http_429": frozenset({"message"}),
    "reject": frozenset({"message"}),
    "accept_then_timeout": frozenset({"seconds", "then"}),
    "drop_connection": frozenset({"after_accept"}),
}
ERROR_KINDS = frozenset({"http_500", "http_502", "http_503", "http_429"})
DEFAULT_LATENCY_SECONDS = 1.0
# Longer than the kiteconnect client's default 7 s timeout.
DEFAULT_HOLD_SECONDS = 10.0
DEFAULT_REJECT_MESSAGE = "RMS:Rule: Order rejected by the risk management system."


@dataclass
class Fault:
    fault_id: int
    kind: str
    route: str
    remaining: int | None
    seconds: float = 0.0
    message: str | None = None
    then: str = "send"
    after_accept: bool = False
    hits: int = 0

    def applies_to(self, route: str) -> bool:
        if self.route not in (ALL_ROUTES, route):
            return False
        # A rejection only means something for order requests, even when aimed at every route.
        return self.kind != "reject" or route in ORDER_ROUTES

    def error(self) -> KiteError:
        """The error answer of an http_* fault."""
        if self.kind == "http_500":
            return GeneralError(self.message or "Something went wrong. Please try again.")
        if self.kind == "http_429":
            return RateLimitError(self.message or "Too many requests")
        status = int(self.kind.removeprefix("http_"))
        return NetworkError(self.message or "Gateway error: the order management system did not answer.",
                            http_status=status)

    def as_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "seconds": self.seconds, "message": self.message, "then": self.then, "after_accept": self.after_accept,
        }
        return {
            "id": self.fault_id,
            "kind": self.kind,
            "route": self.route,
            "count": self.remaining,
            "hits": self.hits,
            **{name: params[name] for name in sorted(KIND_PARAMETERS[self.kind])},
        }


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request: wait `latency_seconds`, then apply `fault` (if any)."""

    latency_seconds: float = 0.0
    fault: Fault | None = None


NO_FAULT = FaultPlan()


class FaultBook:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, spec: Mapping[str, Any]) -> Fault:
        fault = parse_fault(spec, self._next_id)
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def remove(self, fault_id: int) -> bool:
        before = len(self._faults)
        self._faults = [fault for fault in self._faults if fault.fault_id != fault_id]
        return len(self._faults) < before

    def listing(self) -> list[dict[str, Any]]:
        return [fault.as_json() for fault in self._faults]

    def take(self, route: str) -> FaultPlan:
        """The faults that hit this request, each consuming one of its count."""
        if not self._faults:
            return NO_FAULT
        latency = 0.0
        chosen: Fault | None = None
        for fault in self._faults:
            if not fault.applies_to(route):
                continue
            if fault.kind == "latency":
                latency += fault.seconds
            elif chosen is None:
                chosen = fault
            else:
                continue
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
        self._faults = [fault for fault in self._faults if fault.remaining != 0]
        return FaultPlan(latency, chosen)


def parse_fault(spec: Mapping[str, Any], fault_id: int) -> Fault:
    kind = spec.get("kind")
    if kind not in KIND_PARAMETERS:
        raise ControlInputError(f"kind must be one of {', '.join(KIND_PARAMETERS)}; got {kind!r}")
    route = spec.get("route", ALL_ROUTES)
    if route != ALL_ROUTES and route not in ROUTES:
        raise ControlInputError(f"route must be \"*\" or one of {', '.join(ROUTES)}; got {route!r}")
    if kind == "reject" and route != ALL_ROUTES and route not in ORDER_ROUTES:
        raise ControlInputError(f"a reject fault applies to place_order, modify_order or cancel_order, not {route}")
    count = spec.get("count", 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ControlInputError(f"count must be a whole number of requests >= 1, or null for all; got {count!r}")
    allowed = KIND_PARAMETERS[kind]
    unknown = set(spec) - {"kind", "route", "count"} - allowed
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no parameters"
        raise ControlInputError(f"{kind} takes {takes}; unknown: {', '.join(sorted(unknown))}")

    fault = Fault(fault_id=fault_id, kind=kind, route=route, remaining=count)
    if "seconds" in allowed:
        default = DEFAULT_LATENCY_SECONDS if kind == "latency" else DEFAULT_HOLD_SECONDS
        fault.seconds = _seconds(spec.get("seconds", default))
    if "message" in allowed:
        message = spec.get("message")
        if message is not None and not isinstance(message, str):
            raise ControlInputError(f"message must be a string; got {message!r}")
        fault.message = message if message is not None or kind != "reject" else DEFAULT_REJECT_MESSAGE
    if kind == "accept_then_timeout":
        then = spec.get("then", "send")
        if then not in ("send", "drop"):
            raise ControlInputError(f"then must be \"send\" (answer late) or \"drop\" (close); got {then!r}")
        fault.then = then
    if kind == "drop_connection":
        after_accept = spec.get("after_accept", False)
        if not isinstance(after_accept, bool):
            raise ControlInputError(f"after_accept must be true or false; got {after_accept!r}")
        fault.after_accept = after_accept
    return fault


def _seconds(value: Any) -> float:
    return positive_number("seconds", value)


def positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A duration or ratio from control JSON (numbers arrive as int or Decimal)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ControlInputError(f"{name} must be a number; got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ControlInputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")
    return float(value)
