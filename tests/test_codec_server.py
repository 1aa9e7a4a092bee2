"""The codec server speaks Temporal's remote codec protocol, as the UI and CLI call it."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from apps.codec_server import create_app, create_app_from_env
from engine.codec import CodecConfigError, EncryptionCodec, generate_key, parse_keys

UI_ORIGIN = "http://localhost:8080"
TOKEN = "codec-test-token-3f9a"
ORDER_JSON = b'{"strategy_id":"strat-momentum-7","symbol":"RELIANCE","quantity":10}'


def payload_json(data: bytes, encoding: bytes = b"json/plain") -> dict[str, object]:
    """A payload as protobuf JSON: bytes fields in base64, as the UI sends them."""
    return {
        "metadata": {"encoding": base64.b64encode(encoding).decode()},
        "data": base64.b64encode(data).decode(),
    }


def field_bytes(payload: dict[str, object], name: str) -> bytes:
    value = payload[name] if name == "data" else payload["metadata"][name]  # type: ignore[index]
    return base64.b64decode(str(value))


@pytest.fixture
def codec() -> EncryptionCodec:
    return EncryptionCodec(parse_keys(f"k1:{generate_key()}"))


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


@pytest.fixture
async def open_client(codec: EncryptionCodec) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(codec, cors_origins=[UI_ORIGIN])) as client:
        yield client


@pytest.fixture
async def guarded_client(codec: EncryptionCodec) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(codec, cors_origins=[UI_ORIGIN], auth_token=TOKEN)) as client:
        yield client


async def test_encode_then_decode_round_trips(open_client: httpx.AsyncClient) -> None:
    encoded = await open_client.post("/encode", json={"payloads": [payload_json(ORDER_JSON)]})
    assert encoded.status_code == 200 and encoded.headers["content-type"] == "application/json"
    [sealed] = encoded.json()["payloads"]
    assert field_bytes(sealed, "encoding") == b"binary/encrypted"
    assert b"RELIANCE" not in field_bytes(sealed, "data")

    decoded = await open_client.post("/decode", json={"payloads": [sealed]})

    assert decoded.status_code == 200
    [opened] = decoded.json()["payloads"]
    assert field_bytes(opened, "data") == ORDER_JSON
    assert field_bytes(opened, "encoding") == b"json/plain"


async def test_decode_answers_payloads_the_workers_encrypted(
    open_client: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=ORDER_JSON)])
    body = {"payloads": [json_format.MessageToDict(sealed)]}

    response = await open_client.post("/decode", json=body, headers={"X-Namespace": "default"})

    assert field_bytes(response.json()["payloads"][0], "data") == ORDER_JSON


async def test_namespace_prefixed_paths_are_served(open_client: httpx.AsyncClient) -> None:
    # The CLI's --codec-endpoint http://host:8081/{namespace} posts to /<namespace>/decode.
    encoded = await open_client.post("/default/encode", json={"payloads": [payload_json(ORDER_JSON)]})
    decoded = await open_client.post("/default/decode", json=encoded.json())

    assert field_bytes(decoded.json()["payloads"][0], "data") == ORDER_JSON


async def test_unencrypted_payloads_decode_unchanged(open_client: httpx.AsyncClient) -> None:
    response = await open_client.post("/decode", json={"payloads": [payload_json(ORDER_JSON)]})

    assert field_bytes(response.json()["payloads"][0], "data") == ORDER_JSON


async def test_empty_payload_list_is_answered(open_client: httpx.AsyncClient) -> None:
    response = await open_client.post("/decode", json={})

    assert response.status_code == 200 and json.loads(response.text) == {}


async def test_malformed_body_is_a_400_that_says_what_is_expected(open_client: httpx.AsyncClient) -> None:
    response = await open_client.post(
        "/decode", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert "Payloads message as JSON" in response.json()["detail"]


async def test_tampered_payload_is_a_400_naming_the_problem(open_client: httpx.AsyncClient) -> None:
    [sealed] = (await open_client.post("/encode", json={"payloads": [payload_json(ORDER_JSON)]})).json()[
        "payloads"
    ]
    data = bytearray(field_bytes(sealed, "data"))
    data[-1] ^= 0x01
    sealed["data"] = base64.b64encode(bytes(data)).decode()

    response = await open_client.post("/decode", json={"payloads": [sealed]})

    assert response.status_code == 400
    assert "failed authentication" in response.json()["detail"]


async def test_unknown_key_id_is_a_400_naming_the_key(open_client: httpx.AsyncClient) -> None:
    other = EncryptionCodec(parse_keys(f"retired:{generate_key()}"))
    [sealed] = await other.encode([Payload(metadata={"encoding": b"json/plain"}, data=ORDER_JSON)])
    body = {"payloads": [json_format.MessageToDict(sealed)]}

    response = await open_client.post("/decode", json=body)

    assert response.status_code == 400 and "'retired'" in response.json()["detail"]


async def test_cors_preflight_from_the_ui_origin_is_allowed(open_client: httpx.AsyncClient) -> None:
    response = await open_client.options(
        "/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "x-namespace" in response.headers["access-control-allow-headers"].lower()


async def test_cors_answers_carry_the_origin_only_for_allowed_origins(open_client: httpx.AsyncClient) -> None:
    allowed = await open_client.post("/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
    foreign = await open_client.post(
        "/decode", json={"payloads": []}, headers={"Origin": "http://evil.example"}
    )
    foreign_preflight = await open_client.options(
        "/decode", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )

    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "access-control-allow-origin" not in foreign.headers
    assert foreign_preflight.status_code == 400


async def test_bearer_token_is_required_when_configured(guarded_client: httpx.AsyncClient) -> None:
    body = {"payloads": [payload_json(ORDER_JSON)]}

    missing = await guarded_client.post("/encode", json=body)
    wrong = await guarded_client.post("/encode", json=body, headers={"Authorization": "Bearer nope"})
    right = await guarded_client.post("/encode", json=body, headers={"Authorization": f"Bearer {TOKEN}"})

    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert TOKEN not in wrong.text
    assert right.status_code == 200


async def test_preflight_and_health_need_no_token(guarded_client: httpx.AsyncClient) -> None:
    # Browsers never send credentials on a preflight, so it must pass without the token.
    preflight = await guarded_client.options(
        "/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    health = await guarded_client.get("/health")

    assert preflight.status_code == 200
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_app_from_env_reads_keys_origins_and_token() -> None:
    app = create_app_from_env(
        {
            "ENGINE_PAYLOAD_CODEC_KEYS": f"k1:{generate_key()}",
            "ENGINE_CODEC_CORS_ORIGINS": f"{UI_ORIGIN}/, http://ops.internal:8080",
            "ENGINE_CODEC_AUTH_TOKEN": TOKEN,
        }
    )

    async with client_for(app) as client:
        unauthorized = await client.post("/encode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
        preflight = await client.options(
            "/decode", headers={"Origin": "http://ops.internal:8080", "Access-Control-Request-Method": "POST"}
        )

    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == UI_ORIGIN
    assert preflight.headers["access-control-allow-origin"] == "http://ops.internal:8080"


def test_app_from_env_without_keys_refuses_to_start() -> None:
    with pytest.raises(CodecConfigError, match="needs ENGINE_PAYLOAD_CODEC_KEYS"):
        create_app_from_env({"ENGINE_CODEC_CORS_ORIGINS": UI_ORIGIN})


def test_module_app_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import apps.codec_server as codec_server

    monkeypatch.setenv("ENGINE_PAYLOAD_CODEC_KEYS", f"k1:{generate_key()}")
    monkeypatch.setattr(codec_server, "_app_from_env", None)

    assert isinstance(codec_server.app, FastAPI)
    assert codec_server.app is codec_server.app
