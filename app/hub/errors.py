"""Hugging Face failures as messages a person can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class HubError(Exception):
    """Something went wrong talking to Hugging Face; the message says what to do."""


class HubOffline(HubError):
    """Hugging Face cannot be reached."""


class HubNotFound(HubError):
    """No such repository or file (or it is private)."""


class HubUnauthorized(HubError):
    """A token is needed, or the repo is gated."""


class HubServerError(HubError):
    """Hugging Face answered with a server error."""


class VerificationFailed(HubError):
    """The downloaded bytes do not match the SHA-256 the hub publishes."""


class DiskFull(HubError):
    """Not enough free space for the download."""


class Cancelled(HubError):
    """The user cancelled; the partial file was removed."""


class Paused(HubError):
    """The user paused; the partial file is kept for resuming."""


class RefusedName(HubError):
    """The hub offered a repo id or file name that would not stay inside its folder on disk."""


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn huggingface-hub and network exceptions into HubError subclasses."""
    import httpx2
    from huggingface_hub import errors

    try:
        yield
    except HubError:
        raise
    except errors.GatedRepoError:
        raise HubUnauthorized(f"{what} is gated: accept its terms on huggingface.co, then add "
                              "a Hugging Face token in QuantDesk's settings.") from None
    except errors.RepositoryNotFoundError:
        raise HubNotFound(f"{what} was not found. Check the name; if it is private, add a "
                          "Hugging Face token that can see it.") from None
    except (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError):
        raise HubNotFound(f"{what} was not found in the repository.") from None
    except errors.HFValidationError as exc:
        # the client's own check of a repo id or revision (a name from a search hit, say)
        raise RefusedName(f"{what} is not a valid Hugging Face name: {exc}") from None
    except errors.OfflineModeIsEnabled:
        raise HubOffline("Hugging Face is switched off (HF_HUB_OFFLINE is set).") from None
    except errors.HfHubHTTPError as exc:
        code = _status(exc)
        if code in (401, 403):
            raise HubUnauthorized(f"Hugging Face refused access to {what} ({code}): add or "
                                  "check your Hugging Face token.") from None
        if code is not None and code >= 500:
            raise HubServerError(f"Hugging Face had an error ({code}) while serving {what}. "
                                 "Try again in a few minutes.") from None
        raise HubError(f"Hugging Face answered {code} for {what}.") from None
    except (httpx2.TransportError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            raise
        raise HubOffline("Hugging Face cannot be reached: check your internet connection "
                         f"({type(exc).__name__}).") from None
