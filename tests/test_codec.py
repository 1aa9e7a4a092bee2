"""The payload codec: AES-256-GCM sealing, key rotation, tamper detection, configuration errors."""

from __future__ import annotations

import base64
import subprocess
import sys
from decimal import Decimal

import pytest
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from engine.codec import (
    ENCRYPTED_ENCODING,
    METADATA_KEY_ID,
    CodecConfigError,
    EncryptionCodec,
    PayloadAuthenticationError,
    UnknownKeyIdError,
    codec_from_env,
    encrypted_data_converter,
    generate_key,
    parse_keys,
)


class OrderIntent(BaseModel):
    strategy_id: str
    symbol: str
    quantity: int
    trigger_price: Decimal


INTENT = OrderIntent(
    strategy_id="strat-momentum-7", symbol="RELIANCE", quantity=10, trigger_price=Decimal("2875.55")
)


def codec_with(keys: dict[str, str], current: str) -> EncryptionCodec:
    return EncryptionCodec(parse_keys(",".join(f"{key_id}:{key}" for key_id, key in keys.items()), current))


def order_payload() -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([INTENT])[0]


async def test_round_trip_restores_payload_and_hides_plaintext() -> None:
    codec = codec_with({"k1": generate_key()}, "k1")
    original = order_payload()

    [sealed] = await codec.encode([original])
    [opened] = await codec.decode([sealed])

    assert opened == original
    assert sealed.metadata["encoding"] == ENCRYPTED_ENCODING
    assert sealed.metadata[METADATA_KEY_ID] == b"k1"
    assert b"RELIANCE" not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString(), "the inner encoding is sealed too"
    decoded = pydantic_data_converter.payload_converter.from_payloads([opened], [OrderIntent])[0]
    assert decoded == INTENT and decoded.trigger_price == Decimal("2875.55")


async def test_each_payload_gets_a_fresh_nonce() -> None:
    codec = codec_with({"k1": generate_key()}, "k1")

    first, second = await codec.encode([order_payload(), order_payload()])

    assert first.data != second.data


async def test_rotation_new_key_encodes_old_key_still_decodes() -> None:
    old_key, new_key = generate_key(), generate_key()
    before_rotation = codec_with({"k1": old_key}, "k1")
    after_rotation = codec_with({"k1": old_key, "k2": new_key}, "k2")
    [sealed_with_old] = await before_rotation.encode([order_payload()])

    [sealed_with_new] = await after_rotation.encode([order_payload()])
    [opened_old] = await after_rotation.decode([sealed_with_old])

    assert sealed_with_new.metadata[METADATA_KEY_ID] == b"k2"
    assert opened_old == order_payload()
    with pytest.raises(UnknownKeyIdError, match="'k2'"):
        await before_rotation.decode([sealed_with_new])


async def test_unknown_key_id_names_the_key_and_what_to_do() -> None:
    writer = codec_with({"retired": generate_key()}, "retired")
    reader = codec_with({"k2": generate_key()}, "k2")
    [sealed] = await writer.encode([order_payload()])

    with pytest.raises(UnknownKeyIdError) as raised:
        await reader.decode([sealed])

    message = str(raised.value)
    assert "'retired'" in message and "ENGINE_PAYLOAD_CODEC_KEYS" in message and "k2" in message
    assert raised.value.retryable is False


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 0x01]), id="flipped-tag-bit"),
        pytest.param(
            lambda data: data[:20] + bytes([data[20] ^ 0x80]) + data[21:], id="flipped-ciphertext-bit"
        ),
        pytest.param(lambda data: bytes([data[0] ^ 0x01]) + data[1:], id="flipped-nonce-bit"),
        pytest.param(lambda data: data[:30], id="truncated"),
        pytest.param(lambda data: b"", id="emptied"),
    ],
)
async def test_tampered_ciphertext_is_detected(tamper) -> None:
    codec = codec_with({"k1": generate_key()}, "k1")
    [sealed] = await codec.encode([order_payload()])
    sealed.data = tamper(sealed.data)

    with pytest.raises(PayloadAuthenticationError, match="failed authentication under key id 'k1'"):
        await codec.decode([sealed])


async def test_relabelled_key_id_is_detected() -> None:
    # Both keys are known: only authenticating the key id catches a swapped label.
    codec = codec_with({"k1": generate_key(), "k2": generate_key()}, "k1")
    [sealed] = await codec.encode([order_payload()])
    sealed.metadata[METADATA_KEY_ID] = b"k2"

    with pytest.raises(PayloadAuthenticationError):
        await codec.decode([sealed])


async def test_same_key_id_with_a_different_key_is_detected() -> None:
    writer = codec_with({"k1": generate_key()}, "k1")
    reader = codec_with({"k1": generate_key()}, "k1")
    [sealed] = await writer.encode([order_payload()])

    with pytest.raises(PayloadAuthenticationError):
        await reader.decode([sealed])


async def test_payloads_without_the_marker_pass_through() -> None:
    codec = codec_with({"k1": generate_key()}, "k1")
    plain = order_payload()
    binary = Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\x01")
    null = Payload(metadata={"encoding": b"binary/null"})

    assert await codec.decode([plain, binary, null]) == [plain, binary, null]


def test_keys_never_appear_in_reprs_or_errors() -> None:
    key = generate_key()
    codec = codec_with({"k1": key}, "k1")

    assert key not in repr(codec) and "k1" in repr(codec)
    short_key = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(CodecConfigError) as raised:
        parse_keys(f"k1:{short_key}")
    assert short_key not in str(raised.value) and "16 bytes" in str(raised.value)


def test_from_env_is_off_without_keys() -> None:
    assert codec_from_env({}) is None
    assert codec_from_env({"ENGINE_PAYLOAD_CODEC_KEYS": "  "}) is None


def test_from_env_uses_the_named_current_key() -> None:
    codec = codec_from_env(
        {"ENGINE_PAYLOAD_CODEC_KEYS": f"k1:{generate_key()}, k2:{generate_key()}", "ENGINE_PAYLOAD_CODEC_KEY_ID": "k2"}
    )

    assert codec is not None
    assert codec.current_key_id == "k2" and codec.keys.key_ids == ("k1", "k2")


def test_from_env_single_key_needs_no_key_id() -> None:
    codec = codec_from_env({"ENGINE_PAYLOAD_CODEC_KEYS": f"only:{generate_key()}"})

    assert codec is not None and codec.current_key_id == "only"


def test_from_env_accepts_url_safe_base64() -> None:
    url_safe = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()

    codec = codec_from_env({"ENGINE_PAYLOAD_CODEC_KEYS": f"k1:{url_safe}"})

    assert codec is not None


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"ENGINE_PAYLOAD_CODEC_KEY_ID": "k1"}, "ENGINE_PAYLOAD_CODEC_KEYS is empty"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": "k1"}, "not `key_id:base64key`"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": ":abc"}, "not `key_id:base64key`"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": "k1:not base64!"}, "not valid base64"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": "k1:" + base64.b64encode(b"k" * 24).decode()}, "24 bytes; AES-256 needs 32"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": "bad id:" + base64.b64encode(b"k" * 32).decode()}, "key id 'bad id'"),
        ({"ENGINE_PAYLOAD_CODEC_KEYS": "k1:{0},k1:{0}".format(base64.b64encode(b"k" * 32).decode())}, "twice"),
        (
            {"ENGINE_PAYLOAD_CODEC_KEYS": "k1:{0},k2:{0}".format(base64.b64encode(b"k" * 32).decode())},
            "set ENGINE_PAYLOAD_CODEC_KEY_ID",
        ),
        (
            {
                "ENGINE_PAYLOAD_CODEC_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode(),
                "ENGINE_PAYLOAD_CODEC_KEY_ID": "k9",
            },
            "ENGINE_PAYLOAD_CODEC_KEY_ID='k9' names no key",
        ),
    ],
)
def test_bad_configuration_says_what_to_fix(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(CodecConfigError, match=complaint.replace("(", r"\(").replace("$", r"\$")):
        codec_from_env(environ)


def test_generate_key_is_a_fresh_32_byte_key() -> None:
    first, second = generate_key(), generate_key()

    assert len(base64.b64decode(first, validate=True)) == 32
    assert first != second


def test_cli_generate_key_prints_a_usable_entry() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "engine.codec", "generate-key", "--key-id", "k2026a"],
        capture_output=True,
        text=True,
        check=True,
    )

    entry = completed.stdout.strip()
    codec = codec_from_env({"ENGINE_PAYLOAD_CODEC_KEYS": entry})
    assert codec is not None and codec.current_key_id == "k2026a"


def test_encrypted_data_converter_carries_the_codec_and_encrypts_failures() -> None:
    codec = codec_with({"k1": generate_key()}, "k1")

    converter = encrypted_data_converter(codec)

    assert converter.payload_codec is codec
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert converter.payload_converter_class is pydantic_data_converter.payload_converter_class
    assert encrypted_data_converter(None) is pydantic_data_converter
