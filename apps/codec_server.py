"""Codec server: lets the Temporal UI and CLI show encrypted payloads to operators.

Speaks Temporal's remote codec protocol: `POST .../encode` and `POST .../decode` take and return a
`Payloads` message as protobuf JSON (`{"payloads": [{"metadata": {...}, "data": "..."}]}`). Only the
last path segment matters, so `/decode` and `/{namespace}/decode` both work.

    uvicorn apps.codec_server:app --host 0.0.0.0 --port 8081

Environment: `ENGINE_PAYLOAD_CODEC_KEYS` / `ENGINE_PAYLOAD_CODEC_KEY_ID` (see `engine.codec`),
`ENGINE_CODEC_CORS_ORIGINS`
(comma-separated origins allowed to call from a browser: the Temporal UI's), `ENGINE_CODEC_AUTH_TOKEN`
(optional; when set, every encode/decode must carry `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from engine.codec import KEYS_ENV, CodecConfigError, PayloadCodecError, codec_from_env

CORS_ORIGINS_ENV = "ENGINE_CODEC_CORS_ORIGINS"
AUTH_TOKEN_ENV = "ENGINE_CODEC_AUTH_TOKEN"

CodecOperation = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def create_app(
    codec: PayloadCodec, *, cors_origins: Sequence[str] = (), auth_token: str | None = None
) -> FastAPI:
    app = FastAPI(title="Payload codec server", docs_url=None, redoc_url=None, openapi_url=None)

    async def apply(operation: CodecOperation, request: Request) -> Response:
        if auth_token is not None and not _bearer_matches(request.headers.get("authorization"), auth_token):
            return JSONResponse(
                {"detail": "missing or wrong bearer token: send `Authorization: Bearer <ENGINE_CODEC_AUTH_TOKEN>`"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as error:
            return JSONResponse(
                {"detail": f'body must be a Payloads message as JSON ({{"payloads": [...]}}): {error}'},
                status_code=400,
            )
        try:
            result = Payloads(payloads=await operation(payloads.payloads))
        except PayloadCodecError as error:
            return JSONResponse({"detail": str(error)}, status_code=400)
        return Response(json_format.MessageToJson(result), media_type="application/json")

    @app.post("/encode")
    @app.post("/{prefix:path}/encode")
    async def encode(request: Request) -> Response:
        return await apply(codec.encode, request)

    @app.post("/decode")
    @app.post("/{prefix:path}/decode")
    async def decode(request: Request) -> Response:
        return await apply(codec.decode, request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if cors_origins:
        allow_any = "*" in cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            # The UI may send its session cookie (TEMPORAL_CODEC_INCLUDE_CREDENTIALS); never with "*".
            allow_credentials=not allow_any,
            allow_methods=["POST"],
            allow_headers=["content-type", "x-namespace", "authorization"],
            max_age=600,
        )
    return app


def create_app_from_env(environ: Mapping[str, str] = os.environ) -> FastAPI:
    codec = codec_from_env(environ)
    if codec is None:
        raise CodecConfigError(
            f"the codec server needs {KEYS_ENV}: the same keys the workers encrypt with "
            "(`python -m engine.codec generate-key`)"
        )
    origins = tuple(
        origin.strip().rstrip("/")
        for origin in environ.get(CORS_ORIGINS_ENV, "").split(",")
        if origin.strip()
    )
    auth_token = environ.get(AUTH_TOKEN_ENV, "").strip() or None
    return create_app(codec, cors_origins=origins, auth_token=auth_token)


def _bearer_matches(header: str | None, expected_token: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected_token.encode())


_app_from_env: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    # `app` is built on first access, so importing this module never needs the keys.
    global _app_from_env
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app_from_env is None:
        _app_from_env = create_app_from_env()
    return _app_from_env
