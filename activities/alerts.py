"""Alerts: always logged; POSTed to a webhook when one is configured.

Delivery to the other sinks is a workflow of its own (`AlertDeliveryWorkflow`) with its own retries,
so a slow or failing webhook never holds an order back.
"""

from __future__ import annotations

import logging

from temporalio import activity

from engine.models import Alert, AlertLevel

log = logging.getLogger("engine.alerts")

_LOG_LEVEL = {AlertLevel.INFO: logging.INFO, AlertLevel.WARNING: logging.WARNING}


class AlertActivities:
    def __init__(self, has_other_sinks: bool):
        self.has_other_sinks = has_other_sinks

    @activity.defn(name="log_alert")
    async def log_alert(self, alert: Alert) -> bool:
        """Log the alert; answers whether any other sink (the webhook) should carry it too."""
        log.log(
            _LOG_LEVEL.get(alert.level, logging.CRITICAL),
            "ALERT %s: %s — %s",
            alert.level,
            alert.title,
            alert.message,
            extra={"strategy_id": alert.strategy_id, "workflow_id": alert.workflow_id},
        )
        return self.has_other_sinks
