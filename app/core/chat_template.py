"""Render a model's chat template into a prompt, safely and within a budget.

Templates come from GGUF metadata, written by whoever made the file: they are untrusted code.
They run only in Jinja's immutable sandbox, where reaching Python internals (``__class__``,
``__globals__``…) raises; that becomes a ``TemplateError`` a person can understand. There is no
template loader: ``include``, ``import`` and ``extends`` cannot read files.

The sandbox alone does not bound the *work* a template does: nested loops, recursion or a
string doubled forty times would hang the engine (and Stop could not reach it) or eat the
machine's memory. So every render runs under a ``RenderBudget``:

- time: a trace function, installed for the render only, checks the clock (and the caller's
  ``cancelled``) on every line of template code and every Python call, so a runaway template
  ends with ``TemplateBudgetError`` shortly after its time is up — even a loop that calls
  nothing, which no sandbox hook would see;
- size: the output is counted as it is produced, and the operations that can build a large
  value in one step (``*``, ``+``, ``%``, ``**``, ``~``, ``replace``, ``join``, widths passed
  to calls and filters) are checked *before* they run, so no single step allocates more than
  the budget.

A model without a template gets ChatML, the format llama.cpp also falls back to.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, NoReturn

import jinja2
from jinja2 import BaseLoader
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.nodes import Concat, EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Integers handed to a call or filter are widths, counts and indents in any real template; a
# bigger one is there to blow a string up (``'x'.ljust(10**9)``, ``|indent(10**8)``).
MAX_INT_ARGUMENT = 10_000
_TEMPLATE_FILE = "<template>"  # the file name Jinja gives code compiled from a string
_CHECK_EVERY = 64  # trace events between looks at the clock


class TemplateError(Exception):
    """The chat template could not be rendered; the message says why."""


class TemplateBudgetError(TemplateError):
    """The template ran out of time or produced too much; it was stopped."""


class TemplateCancelled(TemplateError):
    """The caller cancelled the render (the user pressed Stop)."""


@dataclass(frozen=True)
class RenderBudget:
    """What one render may spend: wall-clock seconds and characters (of the output, and of any
    single value the template builds on the way)."""

    seconds: float = 1.0
    max_chars: int = 8_000_000


@dataclass(frozen=True)
class Message:
    """One turn: role ('system', 'user', 'assistant') and text."""

    role: str
    content: str


class _OverBudget(BaseException):
    """Raised inside the template's code. A BaseException, so that no ``except Exception`` in
    Jinja's runtime can swallow it and let the template run on."""

    def __init__(self, message: str, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class _Meter:
    """The budget of one render: the clock, the cancel callback, and the size checks."""

    def __init__(self, budget: RenderBudget, cancelled: Callable[[], bool] | None) -> None:
        self.budget = budget
        self.cancelled = cancelled
        self.deadline = time.monotonic() + budget.seconds
        self.ticks = 0
        self.next_look = _CHECK_EVERY  # the trace event at which the clock is read next

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(
                f"the model's chat template ran for more than {self.budget.seconds:g} s and was "
                "stopped (it may loop for ever). The file's template is broken or hostile; "
                "QuantDesk will not run it.")
        if self.cancelled is not None and self.cancelled():
            raise _OverBudget("rendering the chat template was cancelled", cancelled=True)

    def check_size(self, chars: int, what: str = "a value") -> None:
        if chars > self.budget.max_chars:
            raise _OverBudget(
                f"the model's chat template tried to build {what} of more than "
                f"{self.budget.max_chars:,} characters and was stopped. The file's template is "
                "broken or hostile; QuantDesk will not run it.")

    def trace(self, frame: FrameType, event: str, _arg: Any) -> Any:
        """The trace function: 'call' events for every frame, 'line' events in template code.

        The clock is read every ``_CHECK_EVERY`` events, and only in the render's own frames
        (the template's, Jinja's, this module's). Other code runs inside a render too: garbage
        collector callbacks, finalizers, weak-reference callbacks. An error raised in theirs
        would be printed and dropped, and Python would remove the trace function with it: the
        template would then run on with no budget."""
        self.ticks += 1
        file = frame.f_code.co_filename
        if self.ticks >= self.next_look and _renders(file):
            self.next_look = self.ticks + _CHECK_EVERY
            self.check_time()
        return self.trace if file == _TEMPLATE_FILE else None


_JINJA_DIR = str(Path(jinja2.__file__).parent) + os.sep


def _renders(file: str) -> bool:
    """Whether code from ``file`` is part of rendering a template."""
    return file in (_TEMPLATE_FILE, __file__) or file.startswith(_JINJA_DIR)


_SIZED = (str, bytes, list, tuple, dict, set, frozenset)  # the values a size is checked of


def _size(value: object) -> int:
    """Characters (or items) a value holds; 0 for values without a length."""
    return len(value) if isinstance(value, _SIZED) else 0


def _check_ints(meter: _Meter, args: Iterable[object]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARGUMENT:
            raise _OverBudget(
                f"the model's chat template passed {arg:,} where a width or count is expected "
                f"(at most {MAX_INT_ARGUMENT:,} is allowed) and was stopped. The file's template "
                "is broken or hostile; QuantDesk will not run it.")
    meter.check_time()


# A str.format replacement field, and the numbers in it ({0:>12}, {:.3f}).
_FIELD = re.compile(r"\{[^{}]*\}")
_DIGITS = re.compile(r"\d+")
# A printf conversion's width and precision: %-10.3f, %*d, %(name)08x.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\d*)(?:\.(\d*))?")


def _check_printf(meter: _Meter, fmt: str, values: object) -> None:
    """``fmt % values``: no width or precision may exceed the bound, written in the format
    (``%999999999d``) or passed for a ``*``."""
    numbers = [n for spec in _CONVERSION.findall(fmt) for n in spec if n]
    _check_ints(meter, [int(n) if len(n) <= 18 else MAX_INT_ARGUMENT + 1 for n in numbers])
    _check_ints(meter, values if isinstance(values, tuple) else (values,))


class _Generator(CodeGenerator):
    """Compiles ``a ~ b`` to a call that checks the joined size before joining."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.budget_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _NoFiles(BaseLoader):
    """``include``, ``import``, ``extends``: a chat template may not read anything."""

    def get_source(self, environment: Environment, template: str) -> NoReturn:
        raise TemplateError(
            f"the model's chat template tried to read another template or file ({template!r}) "
            "and was stopped. QuantDesk will not run that template.")


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every step that can grow a value checked against a budget."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def __init__(self, meter: _Meter) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, loader=_NoFiles())
        self.meter = meter
        self.filters = {name: self._budgeted(name, f) for name, f in self.filters.items()}

    # The sandbox answers an unsafe attribute with an Undefined that renders as '' and only
    # fails when used: a template that probes for internals would go unnoticed. Any name with a
    # leading underscore is refused at once instead (a dict's own keys stay readable).
    # (the name is looked at here before calling: a call is also one of the budget's trace)
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(attribute, str) and attribute.startswith("_"):
            _refuse_private(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, str) and argument.startswith("_"):
            _refuse_private(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} "
                            "object is unsafe")

    def budget_concat(self, parts: Sequence[object]) -> str:
        texts = [str(p) for p in parts]
        self.meter.check_size(sum(map(len, texts)), "a string")
        return "".join(texts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        # Every operator of the template's loops comes here, and each Python call made here is
        # also a call of the budget's trace function: the sizes are computed inline, and
        # check_size is called only to raise (7.2 ms to render a 170,000-character
        # conversation, 5.6 of them the trace function, before).
        meter = self.meter
        meter.check_time()
        limit = meter.budget.max_chars
        left_size = len(left) if isinstance(left, _SIZED) else 0
        right_size = len(right) if isinstance(right, _SIZED) else 0
        if operator == "*":
            for size, count in ((left_size, right), (right_size, left)):
                if size and isinstance(count, int) and size * max(count, 0) > limit:
                    meter.check_size(size * max(count, 0))
        elif operator == "+":
            if left_size + right_size > limit:
                meter.check_size(left_size + right_size)
        elif operator == "%" and isinstance(left, str):
            _check_printf(meter, left, right)
        elif operator == "**" and isinstance(left, (int, float)) \
                and isinstance(right, (int, float)):
            bits = abs(right) * math.log2(abs(left)) if abs(left) > 1 else 0.0
            if bits > 4096:
                raise _OverBudget(f"the model's chat template computed {left!r} ** {right!r}, a "
                                  "number too large to be part of a prompt, and was stopped.")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, _SIZED) and len(result) > limit:
            meter.check_size(len(result))
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        meter = __self.meter
        if __obj is not safe_range:  # the sandbox already caps range() at 100,000 items
            _check_ints(meter, (*args, *kwargs.values()))
        # str.format reaches here as the sandbox's wrapper around the bound method.
        method = getattr(__obj, "__wrapped__", __obj)
        _check_growth(meter, getattr(method, "__self__", None), getattr(method, "__name__", ""),
                      args)
        result = super().call(__context, __obj, *args, **kwargs)
        meter.check_size(_size(result))
        return result

    def _budgeted(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        meter = self.meter

        @wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            values = [a for a in (*args, *kwargs.values())
                      if not isinstance(a, (Context, Environment, EvalContext))]
            _check_ints(meter, values[1:])  # the first is the value filtered, not a width
            if values:
                _check_filter_growth(meter, name, values[0], values[1:])
            result = fn(*args, **kwargs)
            meter.check_size(_size(result))
            return result

        return checked


def _refuse_private(obj: object, name: object) -> None:
    if isinstance(name, str) and name.startswith("_") and not (
            isinstance(obj, dict) and name in obj):
        raise SecurityError(f"access to {name!r} of a {type(obj).__name__!r} object is not "
                            "allowed")


def _check_growth(meter: _Meter, owner: object, method: str, args: Sequence[object]) -> None:
    """The string methods whose result can be far larger than their inputs."""
    if not isinstance(owner, str):
        return
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) \
            and isinstance(args[1], str):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        meter.check_size(len(owner) + count * max(len(args[1]) - len(args[0]), 0))
    elif method == "join" and args and isinstance(args[0], (list, tuple)):
        joined = sum(len(str(a)) for a in args[0])
        meter.check_size(joined + len(owner) * max(len(args[0]) - 1, 0))
    elif method in ("format", "format_map"):
        widths = [n for field in _FIELD.findall(owner) for n in _DIGITS.findall(field)]
        _check_ints(meter, [int(n) if len(n) <= 18 else MAX_INT_ARGUMENT + 1 for n in widths])
    elif method == "expandtabs":
        meter.check_size(len(owner) * 8 if not args else len(owner) * max(1, _int(args[0])))


def _check_filter_growth(meter: _Meter, name: str, value: object,
                         args: Sequence[object]) -> None:
    """The filters whose result can be far larger than their inputs."""
    text = value if isinstance(value, str) else ""
    if name == "replace" and len(args) >= 2:
        _check_growth(meter, text or str(value), "replace", [str(args[0]), str(args[1])])
    elif name == "join" and isinstance(value, (list, tuple)):
        sep = str(args[0]) if args else ""
        _check_growth(meter, sep, "join", [value])
    elif name == "indent" and text:
        width = args[0] if args else 4
        pad = len(width) if isinstance(width, str) else _int(width)
        meter.check_size(len(text) + pad * (text.count("\n") + 1))
    elif name == "format" and text:
        _check_printf(meter, text, tuple(args))


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"the model's chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    if len(fmt) > 256:
        raise TemplateError("the model's chat template asked for an over-long date format")
    return datetime.datetime.now().strftime(fmt)


# Compiled templates, by source: compiling one took longer than rendering a long conversation
# with it, at every reply. The code is the same for every environment (each render gets a fresh
# one, with its own budget); a template that failed to compile is not kept.
_compiled: dict[str, CodeType] = {}
_COMPILED_KEPT = 8


def _environment(meter: _Meter) -> _BudgetedSandbox:
    env = _BudgetedSandbox(meter)
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
    budget: RenderBudget | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None) in the sandbox, within
    ``budget``. Raises ``TemplateError`` (``TemplateBudgetError`` when over budget,
    ``TemplateCancelled`` when ``cancelled()`` turned true) with a message for a person."""
    source = template if template and template.strip() else CHATML
    meter = _Meter(budget or RenderBudget(), cancelled)
    context: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    previous = sys.gettrace()
    sys.settrace(meter.trace)
    try:
        return _render(source, context, meter)
    except _OverBudget as exc:
        kind = TemplateCancelled if exc.cancelled else TemplateBudgetError
        raise kind(str(exc)) from None
    except SecurityError as exc:
        raise TemplateError(
            "the model's chat template tried to reach Python internals and was stopped "
            f"({exc}). The file may be malicious; QuantDesk will not run that template."
        ) from None
    except TemplateError:
        raise
    except JinjaTemplateError as exc:
        raise TemplateError(f"the model's chat template is broken: {exc}") from None
    except RecursionError:
        raise TemplateError("the model's chat template recursed without end and was "
                            "stopped.") from None
    except MemoryError:
        raise TemplateBudgetError("the model's chat template ran out of memory and was "
                                  "stopped.") from None
    except Exception as exc:  # any other failure of untrusted code is the template's fault
        raise TemplateError(f"the model's chat template failed: {exc}") from None
    finally:
        sys.settrace(previous)


def _render(source: str, context: dict[str, Any], meter: _Meter) -> str:
    parts: list[str] = []
    size = 0
    env = _environment(meter)
    code = _compiled.get(source)
    if code is None:  # compiled under the budget, as the template runs
        code = env.compile(source)
        if len(_compiled) >= _COMPILED_KEPT:
            _compiled.pop(next(iter(_compiled)))
        _compiled[source] = code
    template = env.template_class.from_code(env, code, env.make_globals(None))
    chunks = template.generate(**context)
    try:
        for chunk in chunks:
            size += len(chunk)
            meter.check_size(size, "a prompt")
            parts.append(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            sys.settrace(None)  # the generator's clean-up must not trip the budget again
            close()
    return "".join(parts)
