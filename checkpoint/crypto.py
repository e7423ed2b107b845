"""Encryption at rest: AES-GCM over sealed (zstd) checkpoint blobs, with key rotation.

A :class:`Keyring` holds named keys; the *active* one encrypts new blobs, every key
decrypts the blobs that name it. Rotation is adding a key and making it active: rows
written before still open with the key id recorded in their header, until they are pruned
or re-written.

An encrypted blob is::

    b"FPE" | version (1 byte, 1) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes)
    | AES-GCM ciphertext of the zstd blob | 16-byte tag

The associated data is the header followed by ``tenant_id/run_id/seq``
(:func:`record_aad`), so the tag binds a blob to the place it was written for: a row
copied to another run, seq or tenant, or a header edited to name another key, fails to
open. Opening fails closed: a blob naming a key this process does not hold raises
:class:`EncryptionKeyMissingError`; a damaged or misplaced blob raises
:class:`DecryptionError`. Neither is ever decompressed or used.

Keys come from ``FLOWPOINT_ENCRYPTION_KEYS`` or a keys file, both in the same form:
``kid:base64key`` entries separated by commas or newlines (``#`` starts a comment), the
first entry being the active key. Keys are 16, 24 or 32 bytes (AES-128/192/256; prefer 32:
``python -c "from checkpoint.crypto import generate_key; print(generate_key())"``).

Nonces are random (96 bits): rotate a key well before 2**32 encryptions with it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from checkpoint.errors import ConfigError, DecryptionError, EncryptionKeyMissingError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_VAR",
    "MAGIC",
    "Keyring",
    "generate_key",
    "is_encrypted",
    "key_id_of",
    "open_blob",
    "record_aad",
]

#: Environment variable holding ``kid:base64key[,kid:base64key...]`` (first is active).
ENV_VAR: Final = "FLOWPOINT_ENCRYPTION_KEYS"
#: First bytes of every encrypted blob (a zstd frame starts with 28 b5 2f fd: no clash).
MAGIC: Final = b"FPE"
VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
KEY_SIZES: Final = (16, 24, 32)
_KID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FIXED: Final = len(MAGIC) + 2  # magic, version, key id length


def generate_key(size: int = 32) -> str:
    """A new random key, base64-encoded, for a ``kid:key`` entry."""
    if size not in KEY_SIZES:
        raise ConfigError(f"AES keys are 16, 24 or 32 bytes, not {size}")
    return base64.b64encode(os.urandom(size)).decode("ascii")


def record_aad(tenant_id: str, run_id: str, seq: int) -> bytes:
    """The associated data binding a blob to its row: ``tenant_id/run_id/seq``.

    Ids cannot contain ``/`` (see :mod:`checkpoint.ids`), so the encoding is unambiguous.
    """
    return f"{tenant_id}/{run_id}/{int(seq)}".encode()


def is_encrypted(blob: bytes) -> bool:
    """True when ``blob`` starts like an encrypted blob (any version)."""
    return blob[: len(MAGIC)] == MAGIC


def key_id_of(blob: bytes) -> str | None:
    """The key id an encrypted blob names, or None for a plain (unencrypted) blob.

    Raises :class:`DecryptionError` when the header itself is malformed.
    """
    if not is_encrypted(blob):
        return None
    return _parse_header(blob)[0]


def _parse_header(blob: bytes) -> tuple[str, int]:
    """(key id, header length) of an encrypted blob."""
    if len(blob) < _FIXED:
        raise DecryptionError("encrypted checkpoint is truncated inside its header")
    version = blob[len(MAGIC)]
    if version != VERSION:
        raise DecryptionError(
            f"encrypted checkpoint has format version {version}, this Flowpoint reads "
            f"version {VERSION}: upgrade it, or the blob is damaged"
        )
    kid_len = blob[len(MAGIC) + 1]
    header_len = _FIXED + kid_len + NONCE_BYTES
    if kid_len == 0 or len(blob) < header_len + TAG_BYTES:
        raise DecryptionError("encrypted checkpoint is truncated or its header is damaged")
    raw_kid = blob[_FIXED : _FIXED + kid_len]
    try:
        kid = raw_kid.decode("ascii")
    except UnicodeDecodeError:
        kid = ""
    if not _KID.fullmatch(kid):
        raise DecryptionError(f"encrypted checkpoint names a malformed key id {raw_kid!r:.80}")
    return kid, header_len


def _check_kid(kid: str, where: str) -> str:
    if not _KID.fullmatch(kid):
        raise ConfigError(
            f"{where}: key id {kid!r} must be 1-64 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return kid


def _decode_key(kid: str, text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the key of {kid!r} is not valid base64") from None
    if len(key) not in KEY_SIZES:
        raise ConfigError(
            f"{where}: the key of {kid!r} is {len(key)} bytes; AES-GCM keys are 16, 24 or "
            "32 bytes (generate one with checkpoint.crypto.generate_key())"
        )
    return key


class Keyring:
    """Named AES-GCM keys: the active one encrypts, any of them decrypts.

    >>> ring = Keyring.parse("k2:" + generate_key() + ",k1:" + generate_key())
    >>> ring.active_kid, ring.kids
    ('k2', ('k2', 'k1'))
    >>> blob = ring.encrypt(b"zstd bytes", record_aad("t", "run-1", 3))
    >>> key_id_of(blob), ring.decrypt(blob, record_aad("t", "run-1", 3))
    ('k2', b'zstd bytes')
    """

    __slots__ = ("_active", "_ciphers", "_kids")

    def __init__(
        self,
        keys: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
        *,
        active: str | None = None,
    ) -> None:
        """``keys`` in order (kid -> raw key bytes); ``active`` defaults to the first."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        if not pairs:
            raise ConfigError("an encryption keyring needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        for kid, key in pairs:
            _check_kid(kid, "encryption keys")
            if kid in ciphers:
                raise ConfigError(f"encryption keys: key id {kid!r} appears twice")
            if len(key) not in KEY_SIZES:
                raise ConfigError(
                    f"encryption keys: the key of {kid!r} is {len(key)} bytes; AES-GCM keys "
                    "are 16, 24 or 32 bytes"
                )
            ciphers[kid] = AESGCM(bytes(key))
        active = pairs[0][0] if active is None else active
        if active not in ciphers:
            raise ConfigError(f"the active encryption key {active!r} is not in the keyring")
        self._ciphers = ciphers
        self._kids = tuple(ciphers)
        self._active = active

    def __repr__(self) -> str:
        # Never the key material.
        return f"Keyring(active={self._active!r}, kids={list(self._kids)!r})"

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, where: str = "encryption keys") -> Keyring:
        """Build a keyring from ``kid:base64key`` entries (commas or newlines; first active)."""
        pairs: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for entry in line.split(","):
                entry = entry.strip()
                if not entry:
                    continue
                kid, sep, encoded = entry.partition(":")
                if not sep:
                    raise ConfigError(f"{where}: expected 'kid:base64key', got {entry[:12]!r}...")
                kid = _check_kid(kid.strip(), where)
                pairs.append((kid, _decode_key(kid, encoded, where)))
        if not pairs:
            raise ConfigError(f"{where}: no key found (expected 'kid:base64key' entries)")
        return cls(pairs)

    @classmethod
    def from_file(cls, path: str | Path) -> Keyring:
        """Read a keys file (the :meth:`parse` format)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read encryption keys file {path}: {exc}") from exc
        return cls.parse(text, where=f"encryption keys file {path}")

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> Keyring | None:
        """The keyring in environment variable ``var``, or None when it is unset or empty."""
        text = os.environ.get(var, "")
        if not text.strip():
            return None
        return cls.parse(text, where=f"${var}")

    @classmethod
    def load(cls, path: str | Path | None = None, *, var: str = ENV_VAR) -> Keyring | None:
        """The keys file at ``path`` when given, else ``$FLOWPOINT_ENCRYPTION_KEYS``, else None."""
        if path is not None:
            return cls.from_file(path)
        return cls.from_env(var)

    # -- use -------------------------------------------------------------------------------

    @property
    def active_kid(self) -> str:
        """The key id new blobs are encrypted with."""
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id this keyring can decrypt, active first when it was listed first."""
        return self._kids

    def __contains__(self, kid: object) -> bool:
        return kid in self._ciphers

    def encrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Encrypt ``blob`` with the active key, bound to ``aad`` (see :func:`record_aad`)."""
        kid = self._active.encode("ascii")
        header = MAGIC + bytes((VERSION, len(kid))) + kid + os.urandom(NONCE_BYTES)
        nonce = header[-NONCE_BYTES:]
        return header + self._ciphers[self._active].encrypt(nonce, blob, header + b"\x00" + aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext of an encrypted ``blob`` written for ``aad``.

        Raises :class:`EncryptionKeyMissingError` when the blob names a key this keyring
        does not hold, and :class:`DecryptionError` when the blob was damaged, edited or
        written for another row.
        """
        from cryptography.exceptions import InvalidTag

        if not is_encrypted(blob):
            raise DecryptionError("checkpoint blob is not encrypted (no Flowpoint header)")
        kid, header_len = _parse_header(blob)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise EncryptionKeyMissingError(
                f"checkpoint was encrypted with key {kid!r}, which this process does not hold "
                f"(it has {list(self._kids)}): add that key to {ENV_VAR} or the keys file; "
                "the checkpoint is not used without it"
            )
        header = blob[:header_len]
        try:
            return cipher.decrypt(header[-NONCE_BYTES:], blob[header_len:], header + b"\x00" + aad)
        except InvalidTag:
            raise DecryptionError(
                f"encrypted checkpoint does not authenticate for {aad.decode(errors='replace')} "
                f"with key {kid!r}: it was damaged, or copied from another run, seq or tenant; "
                "it was not used"
            ) from None


def open_blob(keyring: Keyring | None, blob: bytes, aad: bytes) -> bytes:
    """The zstd blob inside a stored blob: decrypted when encrypted, as is when plain.

    A plain blob is accepted even with a keyring (rows written before encryption was
    enabled); an encrypted one without a keyring fails closed.
    """
    if not is_encrypted(blob):
        return blob
    if keyring is None:
        kid = key_id_of(blob)
        raise EncryptionKeyMissingError(
            f"checkpoint is encrypted (key {kid!r}) but no encryption keys are configured: "
            f"set {ENV_VAR} or pass an encryption keys file; the checkpoint is not used "
            "without its key"
        )
    return keyring.decrypt(blob, aad)
