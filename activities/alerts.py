"""Alerts: always logged; POSTed to a webhook when one is configured.

The webhook is its own activity with its own retries, so a slow or failing webhook never holds an
order back.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx
from temporalio import activity

from engine.models import Alert, AlertLevel

log = logging.getLogger("engine.alerts")

_LOG_LEVEL = {AlertLevel.INFO: logging.INFO, AlertLevel.WARNING: logging.WARNING}


class AlertActivities:
    def __init__(self, webhook_url: str | None, http: httpx.AsyncClient | None = None):
        self.webhook_url = webhook_url
        self._http = http

    @activity.defn(name="log_alert")
    async def log_alert(self, alert: Alert) -> bool:
        """Log the alert; answers whether a webhook should carry it too."""
        log.log(
            _LOG_LEVEL.get(alert.level, logging.CRITICAL),
            "ALERT %s: %s — %s",
            alert.level,
            alert.title,
            alert.message,
            extra={"strategy_id": alert.strategy_id, "workflow_id": alert.workflow_id},
        )
        return self.webhook_url is not None

    @activity.defn(name="post_alert_webhook")
    async def post_alert_webhook(self, alert: Alert) -> bool:
        """POST the alert as JSON; False when no webhook is configured. Raises to be retried."""
        if not self.webhook_url:
            return False
        payload = alert.model_dump(mode="json")
        payload.setdefault("created_at", datetime.now(UTC).isoformat())
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        response = await self._http.post(self.webhook_url, json=payload)
        response.raise_for_status()
        return True
