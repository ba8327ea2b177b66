"""The model host's child process: owns one llama.cpp model and serves the protocol.

Runs ``serve()`` in a spawned process. Everything llama.cpp or llama-cpp-python says goes back to
the parent as ``LogLine`` events (so the parent has the last lines even if this process dies).
One request at a time; a running reply checks the shared stop value after every token.

A reply never runs more than one token ahead of its reader: before it streams a token, it waits
until the parent has read every token it sent (the shared ``consumed`` count). So when the parent
asks to stop after reading a token, at most one more token can reach it — the one already on its
way — however busy the parent was. The next token is computed while the parent reads, so the
wait costs nothing unless the reader falls behind.

The chat template is rendered within a ``RenderBudget`` and can be cancelled by Stop, so a
runaway template ends with a clear error and this process stays usable.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from app.core import chat_template
from app.core.chat_template import RenderBudget
from app.engine import llama_log, load_params, process_stats
from app.engine.protocol import (
    Chat,
    Event,
    Failed,
    Load,
    Loaded,
    LoadProgress,
    LoadSettings,
    LogLine,
    ReplyDone,
    ReplyMetrics,
    Shutdown,
    Token,
    Unload,
    Unloaded,
)
from app.engine.runner import default_threads

log = logging.getLogger(__name__)

_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
             "bf16": 30}


class _Sender:
    """Thread-safe event sender (llama.cpp may log from more than one thread)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._conn.send(event)


class _LogForwarder(logging.Handler):
    def __init__(self, send: _Sender) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        self._send(LogLine(record.levelno, f"{record.name}: {record.getMessage()}"))


class _StderrToLog(io.TextIOBase):
    """llama-cpp-python prints some diagnostics with print(file=sys.stderr): log them instead."""

    def __init__(self) -> None:
        self._log = logging.getLogger("llama-cpp-python")
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self._log.debug("%s", line[:2000])
        return len(text)


@contextlib.contextmanager
def _progress_callback(send: _Sender) -> Iterator[None]:
    """Report llama.cpp's load progress. llama-cpp-python's Llama() has no parameter for it, so
    the default model parameters it starts from get our callback (and the engine's
    ``load_params``) for the length of the load."""
    import llama_cpp
    from llama_cpp import llama_cpp as low_level  # the module llama.py calls through

    last = [-1.0]

    def on_progress(fraction: float, _user: ctypes.c_void_p) -> bool:
        if fraction - last[0] >= 0.02 or fraction >= 1.0:
            last[0] = fraction
            send(LoadProgress(float(fraction)))
        return True

    callback = llama_cpp.llama_progress_callback(on_progress)
    original = low_level.llama_model_default_params

    def params_with_progress() -> Any:
        params = load_params.apply(original())
        params.progress_callback = callback
        return params

    setattr(low_level, "llama_model_default_params", params_with_progress)  # noqa: B010
    try:
        yield
    finally:
        setattr(low_level, "llama_model_default_params", original)  # noqa: B010


def _gpu_used_bytes() -> int | None:
    """Memory in use on llama.cpp's GPU devices, or None when there are none."""
    from app.engine import devices

    gpus = [d for d in devices.read_llama_build().devices if d.kind in ("gpu", "igpu")]
    if not gpus:
        return None
    return sum((d.memory_total or 0) - (d.memory_free or 0) for d in gpus)


def _nothing_generated(seconds: float) -> ReplyMetrics:
    """The metrics of a reply stopped before its prompt was even ready."""
    return ReplyMetrics(prompt_tokens=0, generated_tokens=0, ttft_seconds=0.0,
                        prompt_tokens_per_second=0.0, generation_tokens_per_second=0.0,
                        total_seconds=seconds, peak_rss_bytes=process_stats.peak_rss_bytes())


class _Host:
    def __init__(self, send: _Sender, stop_value: Synchronized,  # type: ignore[type-arg]
                 consumed: Synchronized) -> None:  # type: ignore[type-arg]
        self.send = send
        self.stop_value = stop_value
        self.consumed = consumed
        self.llm: Any = None
        self.settings: LoadSettings | None = None
        self.template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        self.gpu_baseline: int | None = None
        self._eog_tokens: list[int] | None = None

    def eog_tokens(self) -> list[int]:
        """Every token llama.cpp treats as end of generation (computed once per model)."""
        if self._eog_tokens is None:
            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
            self._eog_tokens = [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
                                if llama_cpp.llama_vocab_is_eog(vocab, t)]
        return self._eog_tokens

    def unload(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
            self._eog_tokens = None
            gc.collect()

    def load(self, settings: LoadSettings) -> None:
        from llama_cpp import Llama

        self.unload()
        self.gpu_baseline = _gpu_used_bytes() if settings.n_gpu_layers != 0 else None
        rss_before = process_stats.rss_bytes()
        start = time.perf_counter()
        kwargs: dict[str, Any] = {}
        threads = settings.n_threads or default_threads()
        if settings.type_k:
            kwargs["type_k"] = _KV_TYPES[settings.type_k]
        if settings.type_v:
            kwargs["type_v"] = _KV_TYPES[settings.type_v]
        try:
            with _progress_callback(self.send):
                self.llm = Llama(
                    model_path=settings.path,
                    n_ctx=settings.n_ctx,
                    n_gpu_layers=settings.n_gpu_layers,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_batch=settings.n_batch,
                    n_ubatch=settings.n_ubatch,
                    flash_attn=settings.flash_attn,
                    verbose=True,  # False would redirect the process's stdout/stderr
                    **kwargs,
                )
        except Exception as exc:
            self.llm = None
            errors = [ln for ln in llama_log.recent_lines(30) if "error" in ln.lower()]
            reason = errors[-1].split(":", 1)[-1].strip() if errors else str(exc)
            self.send(Failed(None, f"The model could not be loaded: {reason}",
                             tuple(llama_log.recent_lines(20))))
            return
        self.settings = settings
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        model = self.llm._model
        self.bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self.eos_text = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        gpu_now = _gpu_used_bytes() if self.gpu_baseline is not None else None
        self.send(Loaded(
            path=settings.path,
            n_ctx=self.llm.n_ctx(),
            n_ctx_train=self.llm._model.n_ctx_train(),
            n_gpu_layers=settings.n_gpu_layers,
            load_seconds=time.perf_counter() - start,
            rss_bytes=process_stats.rss_bytes(),
            gpu_bytes=(gpu_now - self.gpu_baseline) if gpu_now is not None
            and self.gpu_baseline is not None else None,
            template_source="model" if self.template else "fallback",
            rss_before_bytes=rss_before,
        ))

    def chat(self, req: Chat) -> None:
        import llama_cpp
        from llama_cpp import StoppingCriteriaList

        if self.llm is None:
            self.send(Failed(req.request_id, "No model is loaded: load one before chatting."))
            return
        received = time.perf_counter()

        def stop_requested_now() -> bool:
            return bool(self.stop_value.value == req.request_id)

        try:
            prompt = chat_template.render(
                self.template,
                [chat_template.Message(m.role, m.content) for m in req.messages],
                bos_token=self.bos_text, eos_token=self.eos_text, budget=RenderBudget(),
                cancelled=stop_requested_now)
        except chat_template.TemplateCancelled:  # Stop pressed while the template ran
            self.send(ReplyDone(req.request_id, "", "stopped",
                                _nothing_generated(time.perf_counter() - received)))
            return
        except chat_template.TemplateError as exc:
            reason = str(exc)
            self.send(Failed(req.request_id, reason[:1].upper() + reason[1:]))
            return
        if self.bos_text and prompt.startswith(self.bos_text) and self.llm._model.add_bos_token():
            prompt = prompt[len(self.bos_text):]  # llama.cpp adds BOS itself
        s = req.sampling
        n_prompt = len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        if n_prompt >= self.llm.n_ctx():
            self.send(Failed(req.request_id,
                             f"The conversation is {n_prompt:,} tokens, more than the model's "
                             f"context of {self.llm.n_ctx():,}. Start a new conversation or load "
                             "the model with a longer context."))
            return
        ctx = self.llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        text_parts: list[str] = []
        finish_reason = "stop"
        ttft = 0.0
        stop_requested = [False]
        sampled = [0]
        longest = [0]
        sent = [0]

        def wait_for_reader() -> None:
            # Hold the next token until the parent has read every one sent (or asked to stop):
            # the reply stays within one token of its reader. Sleep, not spin: on a small
            # machine the reader needs the CPU this process would burn.
            waited = 0
            while self.consumed.value < sent[0] and not stop_requested_now():
                waited += 1
                time.sleep(0 if waited < 20 else 0.0002)

        def stop_now(ids: Any, _logits: Any) -> bool:
            # Called by llama-cpp-python after every sampled token, before it is streamed, even
            # while it holds text back (a possible stop string, an incomplete UTF-8 sequence):
            # Stop acts within one token whatever is being streamed. It also counts the tokens
            # kept, the end-of-turn token included; the extra call after the last token passes
            # no longer sequence.
            wait_for_reader()
            stop_requested[0] = stop_requested_now()
            if len(ids) > longest[0] and not stop_requested[0]:
                longest[0] = len(ids)
                sampled[0] += 1
            return stop_requested[0]

        try:
            stream = self.llm.create_completion(
                prompt,
                max_tokens=min(s.max_tokens, self.llm.n_ctx() - n_prompt),
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                repeat_penalty=s.repeat_penalty,
                seed=s.seed,
                # Only the user's stop strings: llama.cpp already ends on the template's
                # end-of-turn tokens (it marks them end-of-generation), and every stop string
                # makes llama-cpp-python scan and hold back text on each token.
                stop=list(s.stop) or None,
                stopping_criteria=StoppingCriteriaList([stop_now]),
                logit_bias={t: float("-inf") for t in self.eog_tokens()} if s.ignore_eos
                else None,
                stream=True,
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                if choice["text"]:
                    if not text_parts:
                        ttft = time.perf_counter() - received
                    text_parts.append(choice["text"])
                    sent[0] += 1
                    self.send(Token(req.request_id, choice["text"]))
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
            if stop_requested[0]:
                finish_reason = "stopped"
        except MemoryError:
            log.error("generation ran out of memory after %d tokens", sampled[0])
            self.send(Failed(req.request_id,
                             "The engine ran out of memory while generating; the reply is kept "
                             "as far as it got. Reload the model (or pick a smaller one) to go "
                             "on.", tuple(llama_log.recent_lines(20)), unusable=True))
            return
        except Exception as exc:
            log.exception("generation failed")
            self.send(Failed(req.request_id,
                             f"Generation failed: {exc or type(exc).__name__}",
                             tuple(llama_log.recent_lines(20))))
            return
        perf = llama_cpp.llama_perf_context(ctx)
        total = time.perf_counter() - received
        gpu_now = _gpu_used_bytes() if self.gpu_baseline is not None else None
        self.send(ReplyDone(req.request_id, "".join(text_parts), finish_reason, ReplyMetrics(
            prompt_tokens=n_prompt,
            generated_tokens=sampled[0],
            ttft_seconds=ttft,
            prompt_tokens_per_second=(perf.n_p_eval * 1000.0 / perf.t_p_eval_ms
                                      if perf.t_p_eval_ms > 0 else 0.0),
            generation_tokens_per_second=(perf.n_eval * 1000.0 / perf.t_eval_ms
                                          if perf.t_eval_ms > 0 else 0.0),
            total_seconds=total,
            peak_rss_bytes=process_stats.peak_rss_bytes(),
            gpu_bytes=(gpu_now - self.gpu_baseline) if gpu_now is not None
            and self.gpu_baseline is not None else None,
        )))


def serve(requests: Connection, events: Connection, stop_value: Synchronized,  # type: ignore[type-arg]
          consumed: Synchronized) -> None:  # type: ignore[type-arg]
    """The child's main loop: answer requests until Shutdown or the parent goes away.
    ``stop_value`` holds the id of the request to stop; ``consumed`` counts the tokens of the
    running reply that the parent has read."""
    from app.engine.child import exit_with_parent

    exit_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what it means
    # (stop the reply, shut this process down); dying here would lose the reply's end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send = _Sender(events)
    root = logging.getLogger()
    root.handlers[:] = [_LogForwarder(send)]
    root.setLevel(logging.INFO)
    logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
    sys.stderr = _StderrToLog()
    llama_log.install()
    host = _Host(send, stop_value, consumed)
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if isinstance(request, Shutdown):
            break
        if isinstance(request, Load):
            host.load(request.settings)
        elif isinstance(request, Chat):
            host.chat(request)
        elif isinstance(request, Unload):
            host.unload()
            send(Unloaded())
    host.unload()
