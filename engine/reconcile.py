"""Payloads of the reconcile workflow: what to reconcile, and the report of what was found and done.

A report is a list of lines; each line is one finding with the action taken on it. docs/control.md
tells an operator what each kind means and what to do.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Verdict(StrEnum):
    MATCHED = "MATCHED"  # store and broker agree
    REPAIRED = "REPAIRED"  # the store was brought to the broker's truth (an audit event says how)
    NEEDS_PERSON = "NEEDS_PERSON"  # a difference the reconcile cannot explain: flagged, alerted
    LISTED = "LISTED"  # shown for information, never touched (e.g. orders placed by hand)


class Finding(StrEnum):
    ORDER_MATCHED = "ORDER_MATCHED"
    ORDER_IN_FLIGHT = "ORDER_IN_FLIGHT"  # its workflow still follows it: left to the workflow
    ORDER_ADOPTED = "ORDER_ADOPTED"  # an unplaced or unfollowed order found at the broker by tag
    ORDER_RESOLVED = "ORDER_RESOLVED"  # an order no workflow follows, settled from the broker's state
    ORDER_NOT_PLACED = "ORDER_NOT_PLACED"  # no workflow, nothing at the broker: closed, claim released
    ORDER_STILL_OPEN = "ORDER_STILL_OPEN"  # no workflow, open at the broker, the cancel not confirmed
    ORDER_DIFFERS = "ORDER_DIFFERS"  # a finished order whose broker state differs from the store's
    UNKNOWN_ENGINE_TAG = "UNKNOWN_ENGINE_TAG"  # the engine's tag shape, but no order of the store has it
    TWIN_ORDER = "TWIN_ORDER"  # a second broker order under one order's tag
    UNTAGGED_ORDER = "UNTAGGED_ORDER"  # placed at the broker without the engine's tags: listed only
    BROKER_SQUARE_OFF = "BROKER_SQUARE_OFF"  # Kite's own MIS square-off applied to the strategies
    POSITION_MATCHED = "POSITION_MATCHED"
    POSITION_DIFFERS = "POSITION_DIFFERS"  # the strategies' open quantity is not the broker's net
    POSITION_UNOWNED = "POSITION_UNOWNED"  # a broker position no strategy of the account trades
    POSITION_IN_FLIGHT = "POSITION_IN_FLIGHT"  # an order is in flight on it: compared next time
    HOLDINGS_BEYOND_STRATEGIES = "HOLDINGS_BEYOND_STRATEGIES"  # CNC: the demat holds more than the strategies


class ReconcileRequest(BaseModel):
    account_id: int
    dry_run: bool = False
    requested_by: str = "schedule"


class ReportLine(BaseModel):
    """One finding, the verdict on it and what was done (docs/control.md, "The report, line by line")."""

    finding: Finding
    verdict: Verdict
    message: str
    strategy_id: int | None = None
    workflow_id: str | None = None
    broker_order_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, int | None, str | None, str]:
        """The same finding in two runs has the same identity."""
        return (self.finding.value, self.strategy_id, self.broker_order_id, self.message)


class ReconcileReport(BaseModel):
    account_id: int
    dry_run: bool
    requested_by: str
    started_at: datetime
    finished_at: datetime
    lines: list[ReportLine] = Field(default_factory=list)
    # NEEDS_PERSON lines the account's previous report did not hold: what an alert is about.
    new_needs_person: list[ReportLine] = Field(default_factory=list)
    report_id: int | None = None

    def count(self, verdict: Verdict) -> int:
        return sum(1 for line in self.lines if line.verdict is verdict)

    @property
    def matched(self) -> int:
        return self.count(Verdict.MATCHED)

    @property
    def repaired(self) -> int:
        return self.count(Verdict.REPAIRED)

    @property
    def needs_person(self) -> int:
        return self.count(Verdict.NEEDS_PERSON)

    @property
    def worth_an_alert(self) -> bool:
        """A repair, or something for a person that was not already alerted by the previous run."""
        return self.repaired > 0 or bool(self.new_needs_person)

    def summary(self) -> str:
        mode = " (dry run)" if self.dry_run else ""
        return (
            f"account {self.account_id}{mode}: {self.matched} matched, {self.repaired} repaired, "
            f"{self.needs_person} need a person, {self.count(Verdict.LISTED)} listed"
        )
