"""Payload encryption: order data is stored in Temporal's history as AES-256-GCM ciphertext.

Each payload is serialized whole (its metadata and data) and sealed with a random 12-byte nonce under
the current key. The envelope names the key id, so keys can rotate: encode with the current key,
decode with whichever key the payload names. Payloads without the envelope pass through untouched,
so histories written before encryption was switched on stay readable.

Keys come from the environment:

- `ENGINE_PAYLOAD_CODEC_KEYS`: comma-separated `key_id:base64key` pairs, each key 32 random bytes;
- `ENGINE_PAYLOAD_CODEC_KEY_ID`: the key id to encrypt with (optional when there is a single key).

`python -m engine.codec generate-key` prints a fresh key.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

KEYS_ENV = "ENGINE_PAYLOAD_CODEC_KEYS"
KEY_ID_ENV = "ENGINE_PAYLOAD_CODEC_KEY_ID"

ENCRYPTED_ENCODING = b"binary/encrypted"
CIPHER_NAME = b"AES-256-GCM"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
METADATA_CIPHER = "encryption-cipher"

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_GENERATE_HINT = "generate one with `python -m engine.codec generate-key`"


class PayloadCodecError(Exception):
    """Base of every codec failure. None is retryable: the same keys give the same answer."""

    retryable: bool = False


class CodecConfigError(PayloadCodecError, ValueError):
    """The key configuration is malformed; the message says which entry and what to fix."""


class UnknownKeyIdError(PayloadCodecError):
    """A payload names a key id this process was not given (a retired key removed too early)."""

    def __init__(self, key_id: str, known_key_ids: Sequence[str]):
        known = ", ".join(sorted(known_key_ids)) or "none"
        super().__init__(
            f"payload was encrypted with key id {key_id!r}, which is not in {KEYS_ENV} "
            f"(known key ids: {known}); add that key back to {KEYS_ENV} to read it"
        )
        self.key_id = key_id


class PayloadAuthenticationError(PayloadCodecError):
    """The ciphertext failed AES-GCM authentication: it was altered, truncated or sealed by another key."""


class CodecKeys:
    """A keyring: key ids mapped to AES-256 keys, and the id new payloads are sealed with.

    The key material is held only inside `AESGCM` objects; nothing here prints it.
    """

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str):
        if not keys:
            raise CodecConfigError(f"no encryption keys given; {_GENERATE_HINT}")
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise CodecConfigError(
                    f"key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}; {_GENERATE_HINT}"
                )
        if current_key_id not in keys:
            raise CodecConfigError(
                f"{KEY_ID_ENV}={current_key_id!r} names no key in {KEYS_ENV} "
                f"(key ids there: {', '.join(sorted(keys))})"
            )
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current_key_id = current_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._ciphers))

    def cipher(self, key_id: str) -> AESGCM:
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise UnknownKeyIdError(key_id, self.key_ids) from None

    def __repr__(self) -> str:
        return f"CodecKeys(current_key_id={self.current_key_id!r}, key_ids={self.key_ids!r})"


class EncryptionCodec(PayloadCodec):
    """Seals every payload with AES-256-GCM under the current key; opens any payload whose key it holds."""

    def __init__(self, keys: CodecKeys):
        self.keys = keys

    @property
    def current_key_id(self) -> str:
        return self.keys.current_key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.seal(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(payload) for payload in payloads]

    def seal(self, payload: Payload) -> Payload:
        key_id = self.keys.current_key_id
        nonce = os.urandom(NONCE_BYTES)
        # The key id is authenticated too, so a relabelled envelope fails instead of decrypting wrongly.
        ciphertext = self.keys.cipher(key_id).encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={
                METADATA_ENCODING: ENCRYPTED_ENCODING,
                METADATA_KEY_ID: key_id.encode(),
                METADATA_CIPHER: CIPHER_NAME,
            },
            data=nonce + ciphertext,
        )

    def open(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCRYPTED_ENCODING:
            return payload
        raw_key_id = payload.metadata.get(METADATA_KEY_ID)
        if raw_key_id is None:
            raise PayloadAuthenticationError(
                f"encrypted payload carries no {METADATA_KEY_ID!r} metadata; it was altered or "
                "written by another codec"
            )
        key_id = raw_key_id.decode("utf-8", errors="replace")
        cipher = self.keys.cipher(key_id)
        nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plaintext = cipher.decrypt(nonce, ciphertext, raw_key_id)
        except (InvalidTag, ValueError):
            raise PayloadAuthenticationError(
                f"encrypted payload failed authentication under key id {key_id!r}: it was altered "
                "or truncated, or that key id now holds a different key"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plaintext)
        return decoded

    def __repr__(self) -> str:
        return f"EncryptionCodec({self.keys!r})"


def parse_keys(keys_value: str, current_key_id: str | None = None) -> CodecKeys:
    """Parse `key_id:base64key,...`; the current key id may be omitted when there is one key."""
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in keys_value.split(",") if entry.strip()]
    if not entries:
        raise CodecConfigError(f"{KEYS_ENV} is empty; {_GENERATE_HINT}")
    for position, entry in enumerate(entries, start=1):
        key_id, separator, encoded_key = (part.strip() for part in entry.partition(":"))
        if not separator or not key_id or not encoded_key:
            raise CodecConfigError(
                f"{KEYS_ENV} entry {position} is not `key_id:base64key` (e.g. `k2026a:<key>`)"
            )
        _check_key_id(key_id)
        if key_id in keys:
            raise CodecConfigError(f"{KEYS_ENV} names key id {key_id!r} twice; each id needs one key")
        key = _decode_base64(encoded_key)
        if key is None:
            raise CodecConfigError(f"{KEYS_ENV} key {key_id!r} is not valid base64; {_GENERATE_HINT}")
        if len(key) != KEY_BYTES:
            raise CodecConfigError(
                f"{KEYS_ENV} key {key_id!r} decodes to {len(key)} bytes; AES-256 needs {KEY_BYTES}; "
                f"{_GENERATE_HINT}"
            )
        keys[key_id] = key
    if current_key_id is None:
        if len(keys) > 1:
            raise CodecConfigError(
                f"{KEYS_ENV} holds several keys ({', '.join(sorted(keys))}); set {KEY_ID_ENV} to the "
                "one new payloads are encrypted with"
            )
        current_key_id = next(iter(keys))
    return CodecKeys(keys, current_key_id)


def codec_from_env(environ: Mapping[str, str] = os.environ) -> EncryptionCodec | None:
    """The codec the environment configures, or None when no keys are set (encryption off)."""
    keys_value = environ.get(KEYS_ENV, "").strip()
    current_key_id = environ.get(KEY_ID_ENV, "").strip() or None
    if not keys_value:
        if current_key_id is not None:
            raise CodecConfigError(f"{KEY_ID_ENV} is set but {KEYS_ENV} is empty; set both or neither")
        return None
    return EncryptionCodec(parse_keys(keys_value, current_key_id))


def encrypted_data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The pydantic data converter with `codec` on every payload, failure messages included.

    Temporal stores a failure's message and stack trace in plain text unless the failure converter
    moves them into an encoded payload; a broker error naming the symbol would otherwise leak.
    """
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def generate_key() -> str:
    """A fresh AES-256 key, base64-encoded, for `ENGINE_PAYLOAD_CODEC_KEYS`."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise CodecConfigError(
            f"key id {key_id!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )


def _decode_base64(encoded: str) -> bytes | None:
    try:
        raw = encoded.encode("ascii")
    except UnicodeEncodeError:
        return None
    # Keys may be pasted in the standard or the URL-safe alphabet.
    try:
        return base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except binascii.Error:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.codec", description="Payload encryption keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate-key", help="print a new base64 AES-256 key")
    generate.add_argument(
        "--key-id", help="print a ready `key_id:key` entry for ENGINE_PAYLOAD_CODEC_KEYS instead of the bare key"
    )
    args = parser.parse_args(argv)
    if args.command == "generate-key":
        key = generate_key()
        if args.key_id is not None:
            if not _KEY_ID_PATTERN.fullmatch(args.key_id):
                parser.error("--key-id must be 1-64 characters of letters, digits, '.', '_' or '-'")
            print(f"{args.key_id}:{key}")
        else:
            print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
