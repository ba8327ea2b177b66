"""Chat templates render in Jinja's sandbox; injections fail with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.chat_template import CHATML, Message, TemplateError, render
from app.core.gguf_info import read_model_info

MESSAGES = [Message("system", "Be brief."), Message("user", "Hi")]


def test_smollm2_template_renders_chatml(smollm2: Path) -> None:
    template = read_model_info(smollm2).chat_template
    prompt = render(template, MESSAGES)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_missing_template_falls_back_to_chatml() -> None:
    assert render(None, MESSAGES) == render(CHATML, MESSAGES)
    assert render("   ", MESSAGES).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context.joiner.__init__.__globals__.os }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
])
def test_template_injection_is_stopped(payload: str) -> None:
    with pytest.raises(TemplateError, match="tried to reach Python internals"):
        render(payload, MESSAGES)


def test_immutable_sandbox_blocks_mutation() -> None:
    with pytest.raises(TemplateError, match="Python internals"):
        render("{{ messages.append({'role': 'user', 'content': 'x'}) }}", MESSAGES)


def test_raise_exception_from_template() -> None:
    template = ("{% if messages[0]['role'] == 'system' %}"
                "{{ raise_exception('no system') }}{% endif %}")
    with pytest.raises(TemplateError, match="refused the conversation: no system"):
        render(template, MESSAGES)


def test_broken_template_syntax() -> None:
    with pytest.raises(TemplateError, match="broken"):
        render("{% for m in messages %}", MESSAGES)


def test_bos_token_and_generation_prompt_are_passed() -> None:
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{% endfor %}" \
               "{% if add_generation_prompt %}>{% endif %}"
    assert render(template, MESSAGES, bos_token="<s>") == "<s>[system][user]>"
    assert render(template, MESSAGES, add_generation_prompt=False, bos_token="") == \
        "[system][user]"
