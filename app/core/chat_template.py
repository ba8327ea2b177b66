"""Render a model's chat template into a prompt, safely.

Templates come from GGUF metadata, written by whoever made the file: they are untrusted code.
They run only in Jinja's immutable sandbox, where reaching Python internals (``__class__``,
``__globals__``…) raises; that becomes a ``TemplateError`` a person can understand. A model
without a template gets ChatML, the format llama.cpp also falls back to.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

class TemplateError(Exception):
    """The chat template could not be rendered; the message says why."""


@dataclass(frozen=True)
class Message:
    """One turn: role ('system', 'user', 'assistant') and text."""

    role: str
    content: str


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"the model's chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def render(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None) in the sandbox."""
    source = template if template and template.strip() else CHATML
    context: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    try:
        return _environment().from_string(source).render(**context)
    except SecurityError as exc:
        raise TemplateError(
            "the model's chat template tried to reach Python internals and was stopped "
            f"({exc}). The file may be malicious; QuantDesk will not run that template."
        ) from None
    except TemplateError:
        raise
    except JinjaTemplateError as exc:
        raise TemplateError(f"the model's chat template is broken: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateError(f"the model's chat template failed: {exc}") from None

