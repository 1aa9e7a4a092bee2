"""Every error answer in one shape, `{"detail": "what to do"}`, mapped once from the engine's errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from apps.api.schemas import ErrorOut
from engine.errors import DuplicateOrderError
from starter.control import (
    EmergencyStopRefused,
    EmergencyStopUnconfirmed,
    InvalidControlRequest,
    OrderAlreadyFinished,
    UnknownOrder,
)
from starter.deps import StrategyNotRunning, TemporalUnavailable, split_order_key
from store.errors import AlreadyExists, ConcurrentUpdate, InvalidInput, NotFound, OrderInFlight, StoreUnavailable


class ApiError(Exception):
    """An answer other than success, with what to do about it."""

    def __init__(
        self, status_code: int, detail: str, *, headers: dict[str, str] | None = None, **extra: str | None
    ):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers
        self.extra = extra


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None, **extra: str | None
) -> JSONResponse:
    body = ErrorOut(detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _validation_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    def handler(
        exc_type: type[Exception], respond: Callable[[Any], JSONResponse]
    ) -> None:
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return respond(exc)

        app.add_exception_handler(exc_type, handle)

    handler(ApiError, lambda exc: error_response(exc.status_code, exc.detail, exc.headers, **exc.extra))
    handler(
        RequestValidationError,
        lambda exc: error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "fix the request: " + "; ".join(_validation_message(error) for error in exc.errors()[:10]),
        ),
    )
    handler(
        DuplicateOrderError,
        lambda exc: error_response(status.HTTP_409_CONFLICT, str(exc), workflow_id=exc.workflow_id, status=exc.status),
    )
    handler(
        OrderAlreadyFinished,
        lambda exc: error_response(status.HTTP_409_CONFLICT, str(exc), workflow_id=exc.workflow_id, status=exc.outcome),
    )
    handler(
        OrderInFlight,
        lambda exc: error_response(
            status.HTTP_409_CONFLICT, str(exc), workflow_id=split_order_key(exc.active_workflow_id)[0]
        ),
    )
    handler(
        StrategyNotRunning,
        lambda exc: error_response(status.HTTP_409_CONFLICT, str(exc), status=exc.status),
    )
    handler(ConcurrentUpdate, lambda exc: error_response(status.HTTP_409_CONFLICT, f"{exc}; send the request again"))
    handler(UnknownOrder, lambda exc: error_response(status.HTTP_404_NOT_FOUND, str(exc)))
    handler(InvalidControlRequest, lambda exc: error_response(status.HTTP_400_BAD_REQUEST, str(exc)))
    handler(EmergencyStopRefused, lambda exc: error_response(status.HTTP_409_CONFLICT, str(exc)))
    handler(
        EmergencyStopUnconfirmed,
        lambda exc: error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}, workflow_id=exc.workflow_id
        ),
    )
    handler(
        WorkflowUpdateRPCTimeoutOrCancelledError,
        lambda exc: error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "Temporal did not answer in time; the request may still take effect: check, then retry",
            headers={"Retry-After": "5"},
        ),
    )
    handler(NotFound, lambda exc: error_response(status.HTTP_404_NOT_FOUND, str(exc)))
    handler(AlreadyExists, lambda exc: error_response(status.HTTP_409_CONFLICT, str(exc)))
    handler(InvalidInput, lambda exc: error_response(status.HTTP_400_BAD_REQUEST, str(exc)))
    handler(
        TemporalUnavailable,
        lambda exc: error_response(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}),
    )
    handler(
        StoreUnavailable,
        lambda exc: error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; the database is unreachable, retry shortly",
            headers={"Retry-After": "5"},
        ),
    )
    # Anything else is a bug: the same shape of answer, and the traceback in the server's log.
    handler(
        Exception,
        lambda exc: error_response(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"the API failed unexpectedly ({type(exc).__name__}); the server log has the details, please report it",
        ),
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}
ORDER_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 502: {"model": ErrorOut}}
