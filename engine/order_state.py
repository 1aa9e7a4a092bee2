"""Which broker update may replace which: updates arrive out of order, state never moves backwards.

An update is newer when it is terminal and the current state is not, or when both are pending and the
update carries more filled quantity or a later stage of the lifecycle. A terminal state is final.
"""

from __future__ import annotations

TERMINAL_STATUSES = frozenset({"COMPLETE", "REJECTED", "CANCELLED"})


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


# Lifecycle stage of pending statuses; every terminal status outranks them all.
_PENDING_STAGE = {
    "PUT ORDER REQ RECEIVED": 0,
    "AMO REQ RECEIVED": 0,
    "VALIDATION PENDING": 1,
    "OPEN PENDING": 2,
    "TRIGGER PENDING": 3,
    "OPEN": 4,
    "MODIFY VALIDATION PENDING": 4,
    "MODIFY PENDING": 4,
    "CANCEL PENDING": 5,
}


def supersedes(current_status: str, current_filled: int, new_status: str, new_filled: int) -> bool:
    """Whether the update (new_status, new_filled) should replace the current state."""
    if is_terminal(current_status):
        return False
    if is_terminal(new_status):
        return new_filled >= current_filled
    if new_filled != current_filled:
        return new_filled > current_filled
    return _PENDING_STAGE.get(new_status, 0) > _PENDING_STAGE.get(current_status, 0)
