"""What the server binds to and allows: address, key, CORS origins, request limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.addresses import SERVER_HOST, SERVER_PORT, is_loopback
from app.engine.protocol import MAX_PARALLEL

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MAX_BODY_BYTES", "MAX_PARALLEL", "MAX_TOKENS_LIMIT",
           "ServerConfig", "ServerConfigError"]

DEFAULT_HOST = SERVER_HOST
DEFAULT_PORT = SERVER_PORT
MAX_BODY_BYTES = 4 * 1024 * 1024  # a long conversation fits; a file pasted by mistake does not
MAX_TOKENS_LIMIT = 8192  # a reply's max_tokens above this is refused


class ServerConfigError(ValueError):
    """A configuration that is not safe or not valid; the message says what to change."""


@dataclass(frozen=True)
class ServerConfig:
    """``api_key``: required on every request when set, and required to bind anything but
    the loopback address. ``cors_origins``: browser origins allowed to call (none: CORS closed).
    ``model_id``: the name clients use for the served model (default: the file's stem)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    max_tokens_limit: int = MAX_TOKENS_LIMIT
    model_id: str | None = None
    extra_model_ids: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        """Raise ServerConfigError when the configuration would be unsafe or cannot work."""
        if not 0 <= self.port <= 65535:
            raise ServerConfigError(f"Port {self.port} is not a TCP port (0–65535).")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ServerConfigError("The API key is too short: use at least 8 characters.")
        if not is_loopback(self.host) and not self.api_key:
            raise ServerConfigError(
                f"Binding {self.host} makes the model reachable from the network: set an API "
                "key (--api-key) to do that.")
        if "*" in self.cors_origins and not self.api_key:
            raise ServerConfigError("CORS for every origin ('*') lets any web page you visit "
                                    "use the model: set an API key to allow it.")

    @property
    def network_reachable(self) -> bool:
        """Whether other machines can reach the server."""
        return not is_loopback(self.host)

    def base_url(self, port: int | None = None) -> str:
        """The address clients use (``/v1`` included)."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # this machine's view; others use the machine's address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port if port is not None else self.port}/v1"
