"""Encryption at rest: the Keyring, the blob format, and every store through BaseStore."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import codec
from checkpoint.crypto import (
    ENV_VAR,
    MAGIC,
    Keyring,
    generate_key,
    is_encrypted,
    key_id_of,
    open_blob,
    record_aad,
)
from checkpoint.errors import (
    ConfigError,
    CorruptCheckpointError,
    DecryptionError,
    EncryptionKeyMissingError,
)
from checkpoint.store import BaseStore
from checkpoint.stores import FileStore, MemoryStore, SQLiteStore
from tests.conformance.builders import checkpoint

K1 = base64.b64decode(generate_key())
K2 = base64.b64decode(generate_key())
AAD = record_aad("acme", "run-1", 3)


def ring(*pairs: tuple[str, bytes]) -> Keyring:
    return Keyring(list(pairs))


# -- the blob format ----------------------------------------------------------------------------


def test_roundtrip_and_header() -> None:
    keys = ring(("k1", K1))
    blob = keys.encrypt(b"zstd frame bytes", AAD)
    assert blob.startswith(MAGIC + bytes((1, 2)) + b"k1")
    assert is_encrypted(blob) and key_id_of(blob) == "k1"
    assert b"zstd frame bytes" not in blob
    assert keys.decrypt(blob, AAD) == b"zstd frame bytes"
    # header (3 + 1 + 1 + 2 + 12) + plaintext + 16-byte tag
    assert len(blob) == 19 + len(b"zstd frame bytes") + 16


def test_a_plain_zstd_blob_is_not_encrypted() -> None:
    sealed = codec.seal(b'{"a":1}')
    assert not is_encrypted(sealed.blob)
    assert key_id_of(sealed.blob) is None
    assert open_blob(ring(("k1", K1)), sealed.blob, AAD) == sealed.blob
    assert open_blob(None, sealed.blob, AAD) == sealed.blob


def test_each_encryption_uses_a_fresh_nonce() -> None:
    keys = ring(("k1", K1))
    assert keys.encrypt(b"same", AAD) != keys.encrypt(b"same", AAD)


@pytest.mark.parametrize(
    "aad",
    [
        record_aad("acme", "run-1", 4),  # another seq
        record_aad("acme", "run-2", 3),  # another run
        record_aad("globex", "run-1", 3),  # another tenant
        b"",
    ],
)
def test_a_blob_opened_for_another_row_fails(aad: bytes) -> None:
    keys = ring(("k1", K1))
    blob = keys.encrypt(b"payload", AAD)
    with pytest.raises(DecryptionError, match="copied from another run"):
        keys.decrypt(blob, aad)


def test_every_flipped_byte_fails_closed() -> None:
    # The whole read path: decrypt (or, with the magic damaged, take it as plain), then zstd
    # and the SHA-256. No single flipped bit anywhere gets through.
    keys = ring(("k1", K1), ("k2", K2))
    sealed = codec.seal(b'{"a small":"checkpoint"}')
    blob = keys.encrypt(sealed.blob, AAD)
    assert (
        codec.open_sealed(open_blob(keys, blob, AAD), sealed.sha256) == b'{"a small":"checkpoint"}'
    )
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            damaged = bytearray(blob)
            damaged[index] ^= mask
            with pytest.raises(CorruptCheckpointError):
                codec.open_sealed(open_blob(keys, bytes(damaged), AAD), sealed.sha256)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), cut=st.integers(min_value=0, max_value=80))
def test_truncated_or_random_blobs_never_open(data: bytes, cut: int) -> None:
    keys = ring(("k1", K1))
    blob = keys.encrypt(data, AAD)
    if cut < len(blob):
        with pytest.raises(DecryptionError):
            keys.decrypt(blob[:cut], AAD)
    with pytest.raises(CorruptCheckpointError):
        keys.decrypt(MAGIC + data, AAD)


def test_a_header_naming_another_known_key_fails() -> None:
    keys = ring(("k1", K1), ("k2", K2))
    blob = keys.encrypt(b"payload", AAD)
    swapped = blob.replace(b"k1", b"k2", 1)
    assert key_id_of(swapped) == "k2"
    with pytest.raises(DecryptionError):
        keys.decrypt(swapped, AAD)


def test_an_unknown_version_is_refused_clearly() -> None:
    blob = bytearray(ring(("k1", K1)).encrypt(b"payload", AAD))
    blob[3] = 2
    with pytest.raises(DecryptionError, match="format version 2"):
        ring(("k1", K1)).decrypt(bytes(blob), AAD)


# -- rotation and missing keys ------------------------------------------------------------------


def test_rotation_keeps_old_blobs_readable() -> None:
    old = ring(("k1", K1)).encrypt(b"written before rotation", AAD)
    rotated = ring(("k2", K2), ("k1", K1))
    assert rotated.active_kid == "k2"
    new = rotated.encrypt(b"written after", AAD)
    assert key_id_of(new) == "k2"
    assert rotated.decrypt(old, AAD) == b"written before rotation"
    assert rotated.decrypt(new, AAD) == b"written after"


def test_a_missing_key_fails_closed_and_names_the_key() -> None:
    blob = ring(("k1", K1)).encrypt(b"payload", AAD)
    with pytest.raises(EncryptionKeyMissingError, match="'k1'"):
        ring(("k2", K2)).decrypt(blob, AAD)
    with pytest.raises(EncryptionKeyMissingError, match="no encryption keys are configured"):
        open_blob(None, blob, AAD)


def test_the_same_kid_with_another_key_fails() -> None:
    blob = ring(("k1", K1)).encrypt(b"payload", AAD)
    with pytest.raises(DecryptionError):
        ring(("k1", K2)).decrypt(blob, AAD)


# -- loading keys -------------------------------------------------------------------------------


def test_parse_env_and_file_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = generate_key(), generate_key(16)
    text = f"k2:{k2}, k1:{k1}"
    assert Keyring.parse(text).kids == ("k2", "k1")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated 2026-11\nnew-key:{k2}\n\nold.key_1:{k1}  # old\n")
    from_file = Keyring.from_file(keys_file)
    assert (from_file.active_kid, from_file.kids) == ("new-key", ("new-key", "old.key_1"))
    monkeypatch.setenv(ENV_VAR, text)
    from_env = Keyring.from_env()
    assert from_env is not None and from_env.active_kid == "k2"
    blob = from_env.encrypt(b"x", AAD)
    assert Keyring.parse(f"k1:{k1},k2:{k2}").decrypt(blob, AAD) == b"x"
    # a file wins over the environment; nothing at all means no encryption
    loaded = Keyring.load(keys_file)
    assert loaded is not None and loaded.active_kid == "new-key"
    monkeypatch.delenv(ENV_VAR)
    assert Keyring.load() is None
    monkeypatch.setenv(ENV_VAR, "  ")
    assert Keyring.from_env() is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key found"),
        ("k1", "expected 'kid:base64key'"),
        ("k1:not base64!!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "AES-GCM keys are 16, 24 or 32 bytes"),
        (f"-bad:{generate_key()}", "key id '-bad'"),
        (f"k1:{generate_key()},k1:{generate_key()}", "appears twice"),
    ],
)
def test_bad_keys_are_config_errors_without_key_material(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Keyring.parse(text)
    secret = text.partition(":")[2].split(",")[0]
    if len(secret) > 8:
        assert secret not in str(info.value)


def test_constructor_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one key"):
        Keyring([])
    with pytest.raises(ConfigError, match="not in the keyring"):
        Keyring([("k1", K1)], active="k9")
    with pytest.raises(ConfigError, match="cannot read encryption keys file"):
        Keyring.from_file(tmp_path / "absent")
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        generate_key(20)
    keys = Keyring({"a": K1, "b": K2}, active="b")
    assert keys.active_kid == "b" and "a" in keys and "z" not in keys


def test_repr_never_shows_key_material() -> None:
    keys = ring(("k1", K1))
    text = repr(keys)
    assert "k1" in text
    assert base64.b64encode(K1).decode() not in text and str(K1) not in text


# -- every store, through BaseStore ---------------------------------------------------------------


@pytest.fixture(params=["memory", "file", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    kind = request.param
    made: BaseStore
    if kind == "memory":
        made = MemoryStore()
    elif kind == "file":
        made = FileStore(tmp_path / "ckpts", fsync=False)
    else:
        made = SQLiteStore(tmp_path / "ckpts.db")
    try:
        yield made
    finally:
        await made.close()


async def test_stores_encrypt_at_rest_and_read_back(store: BaseStore) -> None:
    store.keyring = ring(("k1", K1))
    cp = checkpoint("run-1", 0, tenant_id="acme", output={"secret": "s3cr3t-value"})
    assert await store.put(cp) == "stored"
    record = await store.get_sealed("run-1", 0)
    assert record is not None
    assert key_id_of(record.blob) == "k1"
    assert b"s3cr3t-value" not in record.blob
    assert await store.get("run-1") == cp
    # a duplicate is still a duplicate (the checksum is of the plaintext)
    assert await store.put(cp) == "duplicate"


async def test_stores_refuse_a_record_moved_to_another_seq(store: BaseStore) -> None:
    store.keyring = ring(("k1", K1))
    await store.put(checkpoint("run-1", 0))
    record = await store.get_sealed("run-1", 0)
    assert record is not None
    moved = dataclasses.replace(record, seq=1)
    with pytest.raises(DecryptionError):
        await store.open_record(moved)
    other_tenant = dataclasses.replace(record, tenant_id="globex")
    with pytest.raises(DecryptionError):
        await store.open_record(other_tenant)


async def test_stores_rotate_and_fail_closed_without_the_key(store: BaseStore) -> None:
    store.keyring = ring(("k1", K1))
    await store.put(checkpoint("run-1", 0))
    store.keyring = ring(("k2", K2), ("k1", K1))  # rotation: add k2, make it active
    await store.put(checkpoint("run-1", 1))
    kids = []
    for seq in (0, 1):
        record = await store.get_sealed("run-1", seq)
        assert record is not None
        kids.append(key_id_of(record.blob))
    assert kids == ["k1", "k2"]
    assert (await store.get("run-1", 0)) == checkpoint("run-1", 0).model_copy(
        update={"created_at": (await store.get("run-1", 0)).created_at}  # type: ignore[union-attr]
    )
    store.keyring = ring(("k2", K2))  # k1 dropped too early
    assert (await store.get("run-1", 1)) is not None
    with pytest.raises(EncryptionKeyMissingError, match="'k1'"):
        await store.get("run-1", 0)
    store.keyring = None
    with pytest.raises(EncryptionKeyMissingError):
        await store.get("run-1", 1)


async def test_plain_rows_still_open_once_encryption_is_on(store: BaseStore) -> None:
    cp = checkpoint("run-1", 0)
    await store.put(cp)
    store.keyring = ring(("k1", K1))
    got = await store.get("run-1")
    assert got is not None and got.run_id == "run-1"
    await store.put(checkpoint("run-1", 1))
    record = await store.get_sealed("run-1", 1)
    assert record is not None and key_id_of(record.blob) == "k1"


def _flip(blob: bytes, index: int) -> bytes:
    damaged = bytearray(blob)
    damaged[index] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize("where", [lambda n: 25, lambda n: n // 2, lambda n: n - 1])
async def test_a_flipped_byte_in_an_encrypted_record_is_corrupt(
    where: Callable[[int], int],
) -> None:
    store = MemoryStore()
    store.keyring = ring(("k1", K1))
    await store.put(checkpoint("run-1", 0))
    record = await store.get_sealed("run-1", 0)
    assert record is not None
    damaged: Any = dataclasses.replace(record, blob=_flip(record.blob, where(len(record.blob))))
    with pytest.raises(DecryptionError):
        await store.open_record(damaged)
