"""The local hub (tests/helpers/fake_hub.py) with private repos that open to a real-looking
Hugging Face token ('hf_…', as ``app.hub.token.set_token`` requires), recording each request
that carried it, so that a test can prove the token was used before looking for leaks of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.helpers.fake_hub import FakeHub


@dataclass
class TokenHub(FakeHub):
    """FakeHub whose ``private`` repos accept ``Authorization: Bearer <token>``."""

    token: str = ""
    requests_with_token: list[str] = field(default_factory=list)  # their paths

    def start(self) -> TokenHub:
        super().start()
        hub = self
        fake_hub_handler: Any = self.server.RequestHandlerClass

        class Handler(fake_hub_handler):  # type: ignore[misc, valid-type]
            def parse_request(self) -> bool:
                ok = bool(super().parse_request())
                if ok and hub.token and self.headers.get("Authorization") == f"Bearer {hub.token}":
                    hub.requests_with_token.append(self.path)
                    # the fake hub's own check knows one token: this one stands for it
                    del self.headers["Authorization"]
                    self.headers["Authorization"] = "Bearer good-token"
                return ok

        # the server builds a handler per request: later requests get this one
        self.server.RequestHandlerClass = Handler
        return self
