"""Encryption at rest in the sidecar: where its keys come from.

Keys are read from ``--encryption-keys-file`` (``Settings.encryption_keys_file``) or, when
no file is given, from the keys themselves in ``Settings.encryption_keys`` (``flowpoint
serve`` fills it from ``$FLOWPOINT_ENCRYPTION_KEYS``). With a keyring the ingest encrypts
each compressed payload before it is committed or spooled, and the resume API decrypts
through the store (:meth:`checkpoint.store.BaseStore.open_raw`). Without one, encrypted rows
are refused (fail closed) and plain rows are written and read as before.
"""

from __future__ import annotations

from checkpoint.crypto import Keyring
from sidecar.config import Settings

__all__ = ["keyring_of"]


def keyring_of(settings: Settings) -> Keyring | None:
    """The keyring the settings name, or None when encryption at rest is off.

    Raises :class:`~checkpoint.errors.ConfigError` for an unreadable or malformed keys
    file or value (the message never includes key material).
    """
    if settings.encryption_keys_file is not None:
        return Keyring.from_file(settings.encryption_keys_file)
    if settings.encryption_keys is not None:
        text = settings.encryption_keys.get_secret_value()
        if text.strip():
            return Keyring.parse(text, where="$FLOWPOINT_ENCRYPTION_KEYS")
    return None
