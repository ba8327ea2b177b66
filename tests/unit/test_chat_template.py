"""Chat templates render in Jinja's sandbox, within a time and size budget; injections fail with
a clear error and reach no Python object, file or network."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core import chat_template
from app.core.chat_template import (
    CHATML,
    Message,
    RenderBudget,
    TemplateBudgetError,
    TemplateCancelled,
    TemplateError,
    render,
)
from app.core.gguf_info import read_model_info

MESSAGES = [Message("system", "Be brief."), Message("user", "Hi")]
LONG = [Message("user", "word " * 2000)]


def test_smollm2_template_renders_chatml(smollm2: Path) -> None:
    template = read_model_info(smollm2).chat_template
    prompt = render(template, MESSAGES)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_missing_template_falls_back_to_chatml() -> None:
    assert render(None, MESSAGES) == render(CHATML, MESSAGES)
    assert render("   ", MESSAGES).endswith("<|im_start|>assistant\n")


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


def test_what_real_templates_use_still_works() -> None:
    # Formatting, widths, joins, indents and loops of the sizes real templates use pass the
    # budget's checks unchanged.
    template = ("{{ '{0} and {1:>5}|{name}'.format('a', 'b', name='n') }} "
                "{{ '%-5s|%.2f' % ('ab', 3.14159) }} {{ 'a,b'.split(',')|join('+') }} "
                "{{ 'x\ny'|indent(2, true) }} {{ ('ab' * 3)|center(10) }} "
                "{% for i in range(3) %}{{ loop.index }}{% endfor %} {{ messages|tojson }}")
    assert render(template, MESSAGES[:1]) == (
        'a and     b|n ab   |3.14 a+b   x\n  y   ababab   123 '
        '[{"content": "Be brief.", "role": "system"}]')


# --- the budget: time ---------------------------------------------------------------------------

RUNAWAY = {
    "nested loops that output nothing":
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "loops over the conversation's own text":
        "{% set s = messages[0].content %}{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}",
    "a flood of small outputs":
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "recursion that branches":
        "{% for m in [1, 2] recursive %}{% if loop.depth < 60 %}{{ loop([1, 2]) }}{% endif %}"
        "{% endfor %}",
    "a macro that calls itself twice, with a depth limit":
        "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
        "{{ f(0) }}",
}


@pytest.mark.parametrize("template", RUNAWAY.values(), ids=RUNAWAY.keys())
def test_runaway_template_ends_with_a_clear_error_within_two_seconds(template: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateBudgetError, match=r"ran for more than 1 s .*loop for ever"):
        render(template, LONG, budget=RenderBudget(seconds=1.0))
    assert time.monotonic() - start < 2.0


def test_endless_recursion_is_a_clear_error() -> None:
    with pytest.raises(TemplateError, match="recursed without end"):
        render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", MESSAGES)


def test_cancel_reaches_a_runaway_render() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    with pytest.raises(TemplateCancelled):
        render(RUNAWAY["nested loops that output nothing"], MESSAGES,
               budget=RenderBudget(seconds=30), cancelled=stop.is_set)
    assert time.monotonic() - start < 1.0


def test_budget_leaves_no_trace_function_behind() -> None:
    import sys

    with pytest.raises(TemplateBudgetError):
        render(RUNAWAY["a flood of small outputs"], MESSAGES, budget=RenderBudget(seconds=0.2))
    assert sys.gettrace() is None
    assert render(CHATML, MESSAGES).startswith("<|im_start|>system")


def test_the_budget_stops_the_template_not_code_that_runs_beside_it() -> None:
    """Other code runs inside a render: garbage collector callbacks (a test library's, a
    profiler's), finalizers, weak-reference callbacks. The budget's error is raised in the
    render's own frames only: raised in theirs, Python would print it, drop it and remove the
    trace function, and the template would run on without a budget."""
    import sys

    meter = chat_template._Meter(RenderBudget(seconds=0.0), None)  # out of time already
    time.sleep(0.001)

    def beside() -> Any:  # a callback's frame, as the trace function sees it
        return sys._getframe()

    frame = beside()
    for _ in range(10 * chat_template._CHECK_EVERY):
        assert meter.trace(frame, "call", None) is None  # not traced further, not stopped
    namespace: dict[str, Any] = {"sys": sys}
    exec(compile("def root():\n    return sys._getframe()\n", "<template>", "exec"),
         namespace)
    with pytest.raises(chat_template._OverBudget, match="ran for more than 0 s"):
        meter.trace(namespace["root"](), "line", None)  # the template's own next step


# --- the budget: size ---------------------------------------------------------------------------

BOMBS = {
    "repeat": "{{ 'x' * 1000000000 }}",
    "power": "{{ 2 ** 100000000 }}",
    "concatenation, unrolled": "{% set a = 'xxxxxxxxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 40,
    "doubling in a loop": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                          "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "list doubling": "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}"
                     "{% set ns.s = ns.s * 2 %}{% endfor %}",
    "replace into every gap": "{% set s = 'x' * 100000 %}{{ s.replace('', s) }}",
    "replace filter": "{% set s = 'x' * 100000 %}{{ s|replace('x', s) }}",
    "ljust": "{{ 'x'.ljust(1000000000) }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "printf width": "{{ '%999999999d' % 1 }}",
    "printf star width": "{{ '%*d' % (999999999, 1) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format filter": "{{ '%999999999s'|format('x') }}",
    "indent every line": "{% set s = '\n' * 100000 %}{{ s|indent(9000) }}",
    "join": "{% set s = 'x' * 1000000 %}{{ s.join([s, s, s, s, s, s, s, s, s, s]) }}",
    "expandtabs": "{% set s = '\t' * 1000000 %}{{ s.expandtabs(5000) }}",
    "output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
}


@pytest.mark.parametrize("template", BOMBS.values(), ids=BOMBS.keys())
def test_size_bombs_stop_before_they_allocate(template: str) -> None:
    budget = RenderBudget(seconds=10, max_chars=1_000_000)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(TemplateBudgetError):
            render(template, MESSAGES, budget=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Checked before each step runs: nothing near the bomb's size was ever allocated.
    assert peak < 40 * budget.max_chars
    assert time.monotonic() - start < 2.0


def test_the_output_limit_is_the_budget() -> None:
    template = "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}"
    assert len(render(template, [], budget=RenderBudget(max_chars=1_000_000))) == 1_000_000
    with pytest.raises(TemplateBudgetError, match="a prompt of more than 999,999"):
        render(template, [], budget=RenderBudget(max_chars=999_999))


def test_a_template_is_compiled_once_and_each_render_has_its_own_budget() -> None:
    template = "{% for i in range(1000) %}{{ 'y' * 1000 }}{{ messages | length }}{% endfor %}"
    first = render(template, [], budget=RenderBudget(max_chars=1_001_000))
    compiled = chat_template._compiled[template]
    assert render(template, MESSAGES) == first.replace("0", "2")  # its own messages
    assert chat_template._compiled[template] is compiled  # not compiled again
    with pytest.raises(TemplateBudgetError, match="a prompt of more than 999,999"):
        render(template, [], budget=RenderBudget(max_chars=999_999))
    # a template that does not compile is not kept
    with pytest.raises(TemplateError):
        render("{% for %}", MESSAGES)
    assert "{% for %}" not in chat_template._compiled


# --- injection: no Python object, file or network -------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on 127.0.0.1 that records whether anything connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    yield sock
    sock.close()


PAYLOADS = [
    # attribute walks to the object graph, os and builtins
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__()[104].__init__.__globals__['sys']"
    ".modules['os'].system('touch CANARY') }}",
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ joiner.__init__.__globals__.os.popen('touch CANARY').read() }}",
    "{{ namespace.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ lipsum.__globals__['os'].system('touch CANARY') }}",
    "{{ lipsum.__globals__.__builtins__.open('SECRET').read() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch CANARY') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('SECRET').read() }}",
    "{{ strftime_now.__globals__['datetime'].sys.modules['os'].system('touch CANARY') }}",
    "{{ range.__globals__ }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{{ namespace().__class__.__init__.__globals__ }}",
    "{{ cycler.next.__func__.__globals__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ messages[0].__class__.__init__.__globals__ }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
    # the same walks through filters and format strings
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages|selectattr('__class__')|list }}",
    "{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ '{x.__globals__}'.format_map({'x': lipsum}) }}",
    "{{ '%s'|format(cycler.__init__.__globals__) }}",
    # changing the conversation or the environment
    "{{ messages.pop() }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{% set x = messages.__setitem__(0, 1) %}",
    # files
    "{% include 'SECRET' %}",
    "{% import 'SECRET' as x %}",
    "{% from 'SECRET' import x %}",
    "{% extends 'SECRET' %}",
    # network
    "{{ cycler.__init__.__globals__.__builtins__.__import__('urllib.request')"
    ".request.urlopen('URL').read() }}",
    "{{ lipsum.__globals__['__builtins__']['__import__']('socket')"
    ".create_connection(('127.0.0.1', PORT)) }}",
]
LEAKS = ("<class", "<function", "<module", "<built-in", "object at 0x", "top secret")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_template_injection_reaches_nothing(payload: str, tmp_path: Path,
                                            listener: socket.socket,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    canary = tmp_path / "CANARY"
    port = listener.getsockname()[1]
    template = (payload.replace("SECRET", str(secret)).replace("CANARY", str(canary))
                .replace("URL", f"http://127.0.0.1:{port}/").replace("PORT", str(port)))
    with pytest.raises(TemplateError) as info:
        render(template, MESSAGES)
    message = str(info.value)
    assert "Python internals" in message or "read another template or file" in message
    assert not any(leak in message for leak in LEAKS)
    assert not canary.exists()
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing connected
    assert render(CHATML, MESSAGES) == render(None, MESSAGES)  # the render after is clean
