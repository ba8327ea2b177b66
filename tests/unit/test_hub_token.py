"""The token goes to the OS keyring, through the real keyring package with an in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import keyring
import pytest
from keyring.backends.fail import Keyring as FailKeyring

from app.core import paths
from app.hub import token
from app.hub.errors import HubError
from tests.helpers.memory_keyring import MemoryKeyring
from tests.helpers.memory_keyring import memory_keyring as use_memory_keyring


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    with use_memory_keyring() as backend:
        yield backend


def test_round_trip_stays_out_of_the_data_folder(memory_keyring: MemoryKeyring) -> None:
    assert token.get_token() is None
    token.set_token("  hf_abcdefghijklmnop  ")
    assert token.get_token() == "hf_abcdefghijklmnop"
    assert memory_keyring.store == {("QuantDesk", "huggingface-token"): "hf_abcdefghijklmnop"}
    for path in paths.data_home().rglob("*"):
        if path.is_file():
            assert b"hf_abcdefghijklmnop" not in path.read_bytes()
    token.delete_token()
    assert token.get_token() is None


def test_rejects_what_is_not_a_token(memory_keyring: MemoryKeyring) -> None:
    with pytest.raises(HubError, match="start with 'hf_'"):
        token.set_token("password123")
    assert memory_keyring.store == {}


def test_no_keyring_is_a_clear_error_not_a_crash() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    try:
        assert token.get_token() is None
        with pytest.raises(token.KeyringUnavailable, match="no keyring"):
            token.set_token("hf_abcdefghijklmnop")
        token.delete_token()
    finally:
        keyring.set_keyring(previous)
