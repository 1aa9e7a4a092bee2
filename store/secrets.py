"""Encryption of broker secrets at rest (Fernet), and where its key comes from."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import make_url

from engine.settings import DATA_DIR, Settings
from store.errors import SecretKeyError

KEY_FILE_NAME = "secret.key"
GENERATE_HINT = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def load_or_create_key(settings: Settings) -> str:
    """The key from ENGINE_SECRET_KEY; with SQLite and no key, the one in data/secret.key (made once)."""
    return resolve_secret_key(settings.database_url, settings.engine_secret_key)


def resolve_secret_key(database_url: str, secret_key: str | None) -> str:
    if secret_key:
        check_key(secret_key)
        return secret_key
    url = make_url(database_url)
    if not url.get_backend_name() == "sqlite":
        raise SecretKeyError(
            f"ENGINE_SECRET_KEY is not set; a {url.get_backend_name()} deployment needs it to encrypt "
            f"broker secrets: {GENERATE_HINT}"
        )
    return _load_or_create_key_file(_key_path_for(url.database))


def _key_path_for(sqlite_database: str | None) -> Path:
    """The key lives beside the database file it protects (data/ in the embedded default)."""
    if not sqlite_database or sqlite_database == ":memory:" or sqlite_database.startswith("file:"):
        return DATA_DIR / KEY_FILE_NAME
    return Path(sqlite_database).parent / KEY_FILE_NAME


def _load_or_create_key_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one writes the key and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        try:
            check_key(key)
        except SecretKeyError as exc:
            raise SecretKeyError(f"{path} does not hold a Fernet key; restore it or set ENGINE_SECRET_KEY") from exc
        return key
    key = Fernet.generate_key().decode()
    with os.fdopen(fd, "w") as key_file:
        key_file.write(key + "\n")
    return key


def check_key(key: str) -> None:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError) as exc:
        raise SecretKeyError(
            f"ENGINE_SECRET_KEY is not a Fernet key (urlsafe base64 of 32 bytes); {GENERATE_HINT}"
        ) from exc


class SecretBox:
    """Encrypts and decrypts short secrets. Its repr never shows the key."""

    def __init__(self, key: str):
        check_key(key)
        self._fernet = Fernet(key.encode())

    def __repr__(self) -> str:
        return "SecretBox(key=<hidden>)"

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "broker secrets cannot be decrypted: the key is not the one they were encrypted with; "
                "restore the original ENGINE_SECRET_KEY (or data/secret.key)"
            ) from None
