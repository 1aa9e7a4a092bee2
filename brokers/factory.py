"""Brokers by credentials: activities ask for the broker of a user's api_key and access token."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from brokers.base import Broker
from brokers.kite import KiteBroker, kite_session
from engine.settings import Settings

# Threads for the synchronous kiteconnect client, shared by every account of one worker.
SHARED_THREADS = 32


class BrokerFactory(Protocol):
    """What activities receive at worker start to reach a user's broker account."""

    def for_credentials(self, api_key: str, access_token: str) -> Broker: ...


class KiteBrokerFactory:
    """One `KiteBroker` per api_key, kept while its access token stays the same; all of them on one
    thread pool and one HTTP session (`kite_session`: the accounts share kept-alive connections).

    A new token for the same api_key (the daily re-login) replaces the cached broker; the old one is
    not closed, since a call may still be using it, and is released when the last user drops it.
    """

    def __init__(self, settings: Settings):
        self._root = settings.kite_root
        self._timeout = settings.broker_http_timeout_seconds
        self._orders_per_second = settings.broker_orders_per_second
        self._brokers: dict[str, tuple[str, KiteBroker]] = {}
        self._executor = ThreadPoolExecutor(max_workers=SHARED_THREADS, thread_name_prefix="kite")
        # And one connection pool: as many kept-alive connections to Kite as threads, for every account.
        self._session = kite_session(SHARED_THREADS)
        # Sync activities may call from several threads.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KiteBrokerFactory(root={self._root!r}, cached={len(self._brokers)})"

    def for_credentials(self, api_key: str, access_token: str) -> KiteBroker:
        token_hash = hashlib.sha256(access_token.encode()).hexdigest()
        with self._lock:
            cached = self._brokers.get(api_key)
            if cached is not None and cached[0] == token_hash:
                return cached[1]
            broker = KiteBroker(
                api_key,
                access_token,
                root=self._root,
                timeout=self._timeout,
                orders_per_second=self._orders_per_second,
                executor=self._executor,
                session=self._session,
            )
            self._brokers[api_key] = (token_hash, broker)
            return broker

    def close(self) -> None:
        """Close every cached broker (worker shutdown)."""
        with self._lock:
            brokers = [broker for _, broker in self._brokers.values()]
            self._brokers.clear()
        for broker in brokers:
            broker.close()
        self._executor.shutdown(wait=False)
        self._session.close()
