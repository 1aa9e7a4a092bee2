"""`Store`: the one object the activities, the API and the scheduler use to read and write state."""

from __future__ import annotations

from store.accounts import AccountsMixin
from store.changes import ChangesMixin
from store.history import HistoryMixin
from store.orders import OrdersMixin
from store.rate_limits import RateLimitsMixin
from store.reconcile import ReconcileMixin
from store.strategies import StrategiesMixin
from store.views import ViewsMixin


class Store(AccountsMixin, StrategiesMixin, OrdersMixin, HistoryMixin, RateLimitsMixin, ReconcileMixin,
            ChangesMixin, ViewsMixin):
    """Users and broker accounts, strategies, the order lifecycle and its audit trail.

    `await Store.connect(url, secret_key)`, then `await store.migrate()` once, `await store.close()`
    at the end. Every method is one transaction; records it returns are frozen and detached.
    """
