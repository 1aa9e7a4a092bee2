"""What the store refuses, classified by whether trying again can help.

Every error is a `StoreError`; `retryable` says whether the same call may succeed later unchanged.
Messages name the thing that is wrong and what to do about it; they never carry secrets.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store failure."""

    retryable: bool = False


class NotFound(StoreError, LookupError):
    """A row the caller named by id does not exist."""


class UserNotFound(NotFound):
    def __init__(self, user_id: int):
        super().__init__(f"user {user_id} does not exist; create it first or check the id")
        self.user_id = user_id


class BrokerAccountNotFound(NotFound):
    def __init__(self, account_id: int):
        super().__init__(f"broker account {account_id} does not exist; add it first or check the id")
        self.account_id = account_id


class StrategyNotFound(NotFound):
    def __init__(self, strategy_id: int):
        super().__init__(f"strategy {strategy_id} does not exist; check the id")
        self.strategy_id = strategy_id


class OrderNotFound(NotFound):
    def __init__(self, workflow_id: str):
        super().__init__(f"no order for workflow {workflow_id!r}; begin_order must run first")
        self.workflow_id = workflow_id


class InvalidInput(StoreError, ValueError):
    """The arguments are wrong or the row is in a state that forbids the change. Nothing was written."""


class AlreadyExists(InvalidInput):
    """A name that must be unique is taken (a username, a user's strategy name)."""


class OrderInFlight(StoreError):
    """Another order of the same strategy has not finished; one order per strategy at a time."""

    def __init__(self, strategy_id: int, active_workflow_id: str):
        super().__init__(
            f"strategy {strategy_id} already has order {active_workflow_id!r} in flight; "
            "wait for it to finish or cancel it"
        )
        self.strategy_id = strategy_id
        self.active_workflow_id = active_workflow_id


class EntryStopped(StoreError):
    """The strategy was stopped after its entry passed validation and before the entry left for the
    broker: nothing was sent. (Exits still go: they are what a stop is for.)"""

    def __init__(self, strategy_id: int, workflow_id: str, status: str, why: str | None):
        super().__init__(
            f"strategy {strategy_id} is {status}" + (f" ({why})" if why else "")
            + f": its BUY {workflow_id} was not sent to the broker"
        )
        self.strategy_id = strategy_id
        self.workflow_id = workflow_id


class FillMismatch(StoreError):
    """A fill that cannot belong to its order or position (more than requested, more than held)."""


class PlacementConflict(StoreError):
    """A second broker order id for one order workflow: the broker may hold a duplicate order."""


class CredentialsMissing(StoreError):
    """The broker account has no usable access token: a person must log in to the broker again."""

    def __init__(self, account_id: int, why: str):
        super().__init__(
            f"broker account {account_id} {why}: log in to Kite for account {account_id} "
            f"(`engine accounts login {account_id}`)"
        )
        self.account_id = account_id


class SecretKeyError(StoreError):
    """The key that encrypts broker secrets is missing, malformed, or not the one the data was written with."""


class ConcurrentUpdate(StoreError):
    """Another writer changed the row between our read and our write. Retrying reads the new state."""

    retryable = True


class StoreUnavailable(StoreError):
    """The database could not be reached or answered with a transient failure."""

    retryable = True


class SchemaOutOfDate(StoreError):
    """The database's schema is not the one this code needs: it was never migrated, or it is behind."""

    def __init__(self, current: str | None, head: str):
        self.current = current
        self.head = head
        where = "has no schema yet (never migrated)" if current is None else f"is at schema revision {current}"
        super().__init__(f"the database {where}; this engine needs {head}: run `engine db upgrade`")
