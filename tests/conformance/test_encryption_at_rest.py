"""Conformance: encryption at rest works the same in every store (``store.keyring``).

:class:`~checkpoint.store.BaseStore` encrypts in ``seal_raw`` and decrypts in
``open_raw``, so each store keeps AES-GCM blobs bound to their tenant, run and seq. The
SidecarStore holds no blobs of its own (the sidecar encrypts with its own keys): for it
the client-side record path is checked, and that its reads do not depend on its keys.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from checkpoint.crypto import Keyring, generate_key, key_id_of
from checkpoint.errors import DecryptionError, EncryptionKeyMissingError
from tests.conformance.builders import checkpoint

K1 = base64.b64decode(generate_key())
K2 = base64.b64decode(generate_key())


async def test_checkpoints_round_trip_encrypted(store: Any, store_id: str) -> None:
    store.keyring = Keyring([("k1", K1)])
    cp = checkpoint("run-1", 0, tenant_id="acme", output={"card": "4111-1111-1111-1111"})
    assert await store.put(cp) == "stored"
    assert await store.put(cp) == "duplicate"
    assert await store.get("run-1") == cp
    record = await store.get_sealed("run-1", 0)
    assert record is not None and key_id_of(record.blob) == "k1"
    assert b"4111-1111" not in record.blob


async def test_a_record_moved_to_another_row_fails_to_open(store: Any) -> None:
    store.keyring = Keyring([("k1", K1)])
    await store.put(checkpoint("run-1", 0, tenant_id="acme"))
    record = await store.get_sealed("run-1", 0)
    assert record is not None
    for moved in (
        dataclasses.replace(record, seq=1),
        dataclasses.replace(record, run_id="run-2"),
        dataclasses.replace(record, tenant_id="globex"),
    ):
        with pytest.raises(DecryptionError):
            await store.open_record(moved)


async def test_rotation_and_a_missing_key(store: Any, store_id: str) -> None:
    store.keyring = Keyring([("k1", K1)])
    await store.put(checkpoint("run-1", 0))
    store.keyring = Keyring([("k2", K2), ("k1", K1)])
    await store.put(checkpoint("run-1", 1))
    assert [c.seq for c in await store.list_checkpoints("run-1")] == [1, 0]
    for seq, kid in ((0, "k1"), (1, "k2")):
        record = await store.get_sealed("run-1", seq)
        # a SidecarStore seals what it fetched on the spot, with its active key
        expected = "k2" if store_id == "sidecar" else kid
        assert record is not None and key_id_of(record.blob) == expected
        assert (await store.get("run-1", seq)) is not None
    store.keyring = Keyring([("k2", K2)])
    if store_id == "sidecar":
        # The sidecar holds the blobs (encrypted, or not, with its own keys): what this
        # client holds does not decide what it can read.
        assert (await store.get("run-1", 0)) is not None
        store.keyring = None
        assert (await store.get("run-1", 1)) is not None
        return
    with pytest.raises(EncryptionKeyMissingError, match="'k1'"):
        await store.get("run-1", 0)
    store.keyring = None
    with pytest.raises(EncryptionKeyMissingError):
        await store.get("run-1", 1)
