"""The token goes to the OS keyring, through the real keyring package with an in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends.fail import Keyring as FailKeyring

from app.core import paths
from app.hub import token
from app.hub.errors import HubError


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


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
