"""The model host's child process: owns one llama.cpp model and serves the protocol.

Runs ``serve()`` in a spawned process. Everything llama.cpp or llama-cpp-python says goes back to
the parent as ``LogLine`` events (so the parent has the last lines even if this process dies).
A model loaded with ``n_parallel`` above 1 generates that many replies at once, one batched
decode per token for all (``Generator.step``); while replies run, the loop takes new requests
between tokens. Each running reply has a *lane* (given by the parent): its slot in the shared
stop and read counts. A reply checks its lane's stop value before every token.

A reply never runs more than one event ahead of its reader (``_Stream``): a piece of text is sent
when the parent has read every event sent before (its lane's ``consumed`` count), and held until
then, to go with the next ones in one event. So generation never waits for the reader (a slow
reader gets fewer, larger events), and when the parent asks to stop, at most one more event can
reach it, the one already on its way, however busy the parent was; held text is dropped. A
request may also ask for a least time between events (``Chat.event_interval``): text for a
person (the window, which redraws a reply 25 times a second, and ``quantdesk chat``) asks for
``READING_INTERVAL``, because on a small machine every event wakes the reader on a core
llama.cpp's threads are using. The window also counts an event read only when it asks for the
next (``ModelHost.more``, at each redraw): the same rule then sends one event per redraw.

A read-ahead (``Chat.read_ahead``: the chat reading the message being typed) decodes its prompt
and ends; any chat request (or Forget) that comes while it runs ends it first, so it never holds
a sequence a reply wants.

The chat template is rendered within a ``RenderBudget`` and can be cancelled by Stop, so a
runaway template ends with a clear error and this process stays usable.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from app.core import chat_template, paths
from app.core.chat_template import RenderBudget
from app.engine import kv_shelf, llama_log, process_stats, token_loop
from app.engine.embedding import EmbeddingContext, EmbeddingsUnsupported
from app.engine.generation import DecodeError, GenerationError, Generator, Outcome, Reply
from app.engine.kv_shelf import KvShelf
from app.engine.protocol import (
    Chat,
    Embed,
    Embeddings,
    Event,
    Failed,
    Forget,
    Load,
    Loaded,
    LoadProgress,
    LoadSettings,
    LogLine,
    ReplyDone,
    ReplyMetrics,
    Sampling,
    Shutdown,
    Token,
    Unload,
    Unloaded,
)

log = logging.getLogger(__name__)
# A read-ahead's reply (Chat.read_ahead): no token is sampled, so the plainest chain
READ_AHEAD = Sampling(temperature=0.0, max_tokens=0)


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


def _shelf_key(settings: LoadSettings, gen: Generator) -> str:
    """What a shelved KV state is only valid for: this model file (its path, size and time)
    and the context's settings, on this llama.cpp."""
    import hashlib
    import json
    from pathlib import Path

    import llama_cpp

    model = Path(settings.path)
    stat = model.stat()
    parts = [str(model.resolve()), stat.st_size, stat.st_mtime_ns, gen.n_ctx, gen.n_seq,
             settings.type_k, settings.type_v, settings.flash_attn, settings.n_gpu_layers,
             list(settings.rpc_servers or ()), llama_cpp.__version__]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _gpu_used_bytes() -> int | None:
    """Memory in use on llama.cpp's GPU devices, or None when there are none."""
    from app.engine import devices

    gpus = [d for d in devices.read_llama_build().devices if d.kind in ("gpu", "igpu")]
    if not gpus:
        return None
    return sum((d.memory_total or 0) - (d.memory_free or 0) for d in gpus)


class _Stream:
    """A reply's text on its way to the parent, never more than one event ahead of its reader.

    A piece is sent when the parent has read every event sent before (the shared ``consumed``
    count) and, when the request asked for an interval, that long after the last event; until
    then, pieces are held and go together in the next event. Generation never waits for the
    reader, and a slow reader gets fewer, larger events instead of a queue.
    When Stop is asked, held pieces are dropped: after Stop at most one event (the one already
    on its way) reaches the parent, however busy it was. ``text`` is what was sent: the reply
    as the parent has it.
    """

    def __init__(self, request_id: int, send: Callable[[Event], None],
                 consumed: Callable[[], int], stopped: Callable[[], bool],
                 interval: float = 0.0) -> None:
        self._request_id, self._send, self._consumed, self._stopped = (
            request_id, send, consumed, stopped)
        self._interval = interval
        self._next_at = 0.0  # no event before this time (perf_counter)
        self._sent = 0  # events
        self._held: list[str] = []
        self._held_tokens = 0  # how many tokens' text is held
        self._pieces: list[str] = []
        self.dropped = 0  # tokens generated whose text was dropped at Stop

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def on_text(self, piece: str, tokens: int) -> bool:
        """The generator's callback (``piece``: the text of ``tokens`` tokens): False (the
        piece refused) once Stop was asked."""
        if self._stopped():
            self._drop()
            return False
        self._held.append(piece)
        self._held_tokens += tokens
        if self._consumed() >= self._sent and (
                not self._interval or time.perf_counter() >= self._next_at):
            self._flush()
        return True

    def finish(self) -> bool:
        """Send what is held at the end of the reply; False when Stop dropped it instead."""
        if self._held and self._stopped():
            self._drop()
            return False
        self._flush()
        return True

    def pace(self, stop_slot: int, stop_value: int, consumed_slot: int,
             fd: int) -> token_loop.Pace:
        """When the C token loop must come back for this stream: when the reader can take
        the next event (``on_text`` would send it), Stop, or a request on ``fd``."""
        wait = self._next_at - time.perf_counter() if self._interval else -1.0
        return token_loop.Pace(stop_slot=stop_slot, stop_value=stop_value,
                               consumed_slot=consumed_slot, sent=self._sent, wait=wait, fd=fd)

    def _drop(self) -> None:
        self.dropped += self._held_tokens
        self._held.clear()
        self._held_tokens = 0

    def _flush(self) -> None:
        if not self._held:
            return
        text, pieces = "".join(self._held), self._held_tokens
        self._held.clear()
        self._held_tokens = 0
        self._sent += 1
        if self._interval:
            self._next_at = time.perf_counter() + self._interval
        self._pieces.append(text)
        self._send(Token(self._request_id, text, pieces))


def _nothing_generated(seconds: float) -> ReplyMetrics:
    """The metrics of a reply stopped before its prompt was even ready."""
    return ReplyMetrics(prompt_tokens=0, generated_tokens=0, ttft_seconds=0.0,
                        prompt_tokens_per_second=0.0, generation_tokens_per_second=0.0,
                        total_seconds=seconds, peak_rss_bytes=process_stats.peak_rss_bytes())


@dataclass
class _Running:
    """A reply the child is generating."""

    request: Chat
    reply: Reply
    stream: _Stream
    received: float  # when the request arrived
    generating: float  # when its prompt was ready (template rendered, tokenized)


class _Host:
    def __init__(self, send: _Sender, stop: Any, consumed: Any, requests_fd: int = -1) -> None:
        """``stop`` and ``consumed``: shared arrays, one slot per lane (the request id to stop;
        the events of the lane's reply the parent has read); ``requests_fd``: the requests'
        connection, for the C token loop to watch (-1: it comes back every
        ``token_loop.MAX_SECONDS`` instead)."""
        self.send = send
        self.stop = stop
        self.consumed = consumed
        self.requests_fd = requests_fd
        self.gen: Generator | None = None
        self.settings: LoadSettings | None = None
        self.template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        self.gpu_baseline: int | None = None
        self.embedder: EmbeddingContext | None = None  # made on the first Embed request
        self.running: dict[int, _Running] = {}  # by request id

    def unload(self) -> None:
        self.stop_all()
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None
            gc.collect()

    def forget(self) -> None:
        """Drop every conversation kept but the ones being answered, and every shelf left on
        disk by earlier loads. A read-ahead ends first: its message may be the deleted
        conversation's."""
        self._end_read_aheads()
        if self.gen is not None:
            self.gen.forget(keep=[r.reply.seq for r in self.running.values()])
        kv_shelf.remove_left(paths.cache_location())

    def load(self, settings: LoadSettings) -> None:
        from app.core.gguf_info import GGUFError, read_model_info

        self.unload()
        self.gpu_baseline = _gpu_used_bytes() if settings.n_gpu_layers != 0 else None
        rss_before = process_stats.rss_bytes()
        start = time.perf_counter()
        last = [-1.0]

        def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.02 or fraction >= 1.0:
                last[0] = fraction
                self.send(LoadProgress(fraction))

        try:
            template = read_model_info(settings.path).chat_template
            self.gen = Generator(settings, progress)
        except (GGUFError, GenerationError) as exc:
            message = str(exc)
            if isinstance(exc, GGUFError):
                message = f"The model could not be loaded: {message}"
            self.send(Failed(None, message, tuple(llama_log.recent_lines(20))))
            return
        self.settings = settings
        self.template = template
        gen = self.gen
        # conversations put aside on disk while another has their sequence, and left for the
        # next load of this model with these settings
        gen.shelf = KvShelf(paths.cache_location(), _shelf_key(settings, gen))
        self.bos_text = gen.token_text(gen.bos)
        self.eos_text = gen.token_text(gen.eos)
        gpu_now = _gpu_used_bytes() if self.gpu_baseline is not None else None
        self.send(Loaded(
            path=settings.path,
            n_ctx=gen.n_ctx,
            n_ctx_train=gen.n_ctx_train,
            n_gpu_layers=settings.n_gpu_layers,
            load_seconds=time.perf_counter() - start,
            rss_bytes=process_stats.rss_bytes(),
            gpu_bytes=(gpu_now - self.gpu_baseline) if gpu_now is not None
            and self.gpu_baseline is not None else None,
            template_source="model" if self.template else "fallback",
            rss_before_bytes=rss_before,
            n_parallel=gen.n_seq,
        ))

    def _prompt(self, req: Chat, stop_requested: Callable[[], bool]) -> str:
        """The text to continue: the request's raw prompt, or its messages through the
        model's chat template (sandboxed, within a budget, cancelled by Stop)."""
        if req.prompt is not None:
            return req.prompt
        prompt = chat_template.render(
            self.template, [chat_template.Message(m.role, m.content) for m in req.messages],
            bos_token=self.bos_text, eos_token=self.eos_text, budget=RenderBudget(),
            cancelled=stop_requested)
        assert self.gen is not None
        if self.bos_text and prompt.startswith(self.bos_text) and self.gen.adds_bos:
            prompt = prompt[len(self.bos_text):]  # llama.cpp adds BOS itself
        return prompt

    def chat(self, req: Chat) -> None:
        """Start a reply (``step`` generates it), or answer at once why it cannot start."""
        gen = self.gen
        if gen is None:
            self.send(Failed(req.request_id, "No model is loaded: load one before chatting.",
                             code="no_model"))
            return
        received = time.perf_counter()
        self._end_read_aheads()  # a reply (or a newer read-ahead) takes their place

        def stop_requested_now() -> bool:
            return bool(self.stop[req.lane] == req.request_id)

        try:
            tokens = gen.tokenize_prompt(self._prompt(req, stop_requested_now))
        except chat_template.TemplateCancelled:  # Stop pressed while the template ran
            self.send(ReplyDone(req.request_id, "", "stopped",
                                _nothing_generated(time.perf_counter() - received)))
            return
        except (chat_template.TemplateError, GenerationError) as exc:
            reason = str(exc)
            self.send(Failed(req.request_id, reason[:1].upper() + reason[1:],
                             code="template" if isinstance(exc, chat_template.TemplateError)
                             else ""))
            return
        if len(tokens) >= gen.n_ctx:
            self.send(Failed(req.request_id,
                             f"The conversation is {len(tokens):,} tokens, more than the model's "
                             f"context of {gen.n_ctx:,}. Start a new conversation or load "
                             "the model with a longer context.", code="context_length"))
            return
        stream = _Stream(req.request_id, self.send, lambda: int(self.consumed[req.lane]),
                         stop_requested_now, req.event_interval)
        try:
            seq = gen.sequence_for(tokens, (r.reply.seq for r in self.running.values()))
            reply = gen.begin(tokens, READ_AHEAD if req.read_ahead else req.sampling,
                              on_text=stream.on_text,
                              should_stop=stop_requested_now, seq=seq)
        except GenerationError as exc:  # a grammar that does not parse, say: this process is fine
            self.send(Failed(req.request_id, str(exc),
                             code="grammar" if "grammar" in str(exc) else ""))
            return
        except MemoryError:  # this request fails; replies already running go on
            log.error("starting a reply ran out of memory")
            self.send(Failed(req.request_id, "The engine ran out of memory starting this reply. "
                             "Reload the model (or pick a smaller one) to go on.",
                             tuple(llama_log.recent_lines(20)), unusable=True))
            return
        except Exception as exc:
            log.exception("starting a reply failed")
            self.send(Failed(req.request_id, f"Generation failed: {exc or type(exc).__name__}",
                             tuple(llama_log.recent_lines(20))))
            return
        self.running[req.request_id] = _Running(req, reply, stream, received,
                                                time.perf_counter())

    def step(self) -> None:
        """One token for every running reply (``Generator.step``); replies that ended are
        answered. A decode that fails fails the replies that were in its batch; anything else
        going wrong fails every reply still running."""
        gen = self.gen
        if not self.running or gen is None:
            return
        try:
            if len(self.running) == 1:  # alone: in C where it can (Generator.run)
                (running,) = self.running.values()
                gen.run(running.reply, self._pace(running))
            else:
                gen.step([r.reply for r in self.running.values()])
        except MemoryError:
            log.error("generation ran out of memory")
            self._fail("The engine ran out of memory while generating; the reply is kept as "
                       "far as it got. Reload the model (or pick a smaller one) to go on.",
                       unusable=True)
        except DecodeError as exc:
            self._fail(str(exc), seqs=exc.seqs, code=exc.code)
        except Exception as exc:
            log.exception("generation failed")
            self._fail(f"Generation failed: {exc or type(exc).__name__}")
        self._answer_ended()

    def _pace(self, running: _Running) -> token_loop.Pace:
        """When the C token loop must come back for ``running``'s reader or a request."""
        lane, slot = running.request.lane, ctypes.sizeof(ctypes.c_int64)  # arrays of 'q'
        return running.stream.pace(ctypes.addressof(self.stop) + lane * slot,
                                   running.request.request_id,
                                   ctypes.addressof(self.consumed) + lane * slot,
                                   self.requests_fd)

    def _end_read_aheads(self) -> None:
        """End the read-aheads running (``Chat.read_ahead``), as stopped; what they decoded
        stays in their sequence's cache."""
        ended = False
        for running in self.running.values():
            if running.request.read_ahead and running.reply.outcome is None:
                running.reply.finish("stopped", held=False)
                ended = True
        if ended:
            self._answer_ended()

    def stop_all(self) -> None:
        """End every running reply as stopped (before an unload or a load)."""
        for running in self.running.values():
            if running.reply.outcome is None:
                running.reply.finish("stopped", held=False)
        self._answer_ended()

    def _answer_ended(self) -> None:
        """Send the end of every reply that has ended, and forget it."""
        for request_id, running in list(self.running.items()):
            if running.reply.outcome is not None:
                del self.running[request_id]
                self._done(running, running.reply.outcome)

    def _fail(self, message: str, unusable: bool = False,
              seqs: frozenset[int] | None = None, code: str = "") -> None:
        """Fail the unfinished replies (those on ``seqs`` only, when given); replies that
        ended before the failure are answered by ``_answer_ended`` as usual."""
        tail = tuple(llama_log.recent_lines(20))
        for request_id, running in list(self.running.items()):
            if running.reply.outcome is not None or (
                    seqs is not None and running.reply.seq not in seqs):
                continue
            del self.running[request_id]
            running.reply.release()
            self.send(Failed(request_id, message, tail, unusable=unusable, code=code))

    def _done(self, running: _Running, outcome: Outcome) -> None:
        finish = outcome.finish_reason
        if not running.stream.finish():  # Stop came while the last pieces waited: not sent
            finish = "stopped"
        gpu_now = _gpu_used_bytes() if self.gpu_baseline is not None else None
        new_prompt = outcome.prompt_tokens - outcome.cached_tokens
        self.send(ReplyDone(running.request.request_id, running.stream.text, finish,
                            ReplyMetrics(
            prompt_tokens=outcome.prompt_tokens,
            # the reply's tokens: those whose text was dropped at Stop are not in it
            generated_tokens=outcome.generated_tokens - running.stream.dropped,
            # the template's time included
            ttft_seconds=running.generating - running.received + outcome.ttft_seconds,
            prompt_tokens_per_second=(new_prompt / outcome.prompt_seconds
                                      if outcome.prompt_seconds > 0 else 0.0),
            generation_tokens_per_second=(outcome.generated_tokens / outcome.generation_seconds
                                          if outcome.generation_seconds > 0 else 0.0),
            total_seconds=time.perf_counter() - running.received,
            peak_rss_bytes=process_stats.peak_rss_bytes(),
            gpu_bytes=(gpu_now - self.gpu_baseline) if gpu_now is not None
            and self.gpu_baseline is not None else None,
            cached_tokens=outcome.cached_tokens,
        )))

    def embed(self, req: Embed) -> None:
        gen = self.gen
        if gen is None:
            self.send(Failed(req.request_id, "No model is loaded: load one first.",
                             code="no_model"))
            return
        try:
            if self.embedder is None:
                assert self.settings is not None
                self.embedder = EmbeddingContext(gen.model, self.settings)
            vectors, n_tokens = self.embedder.embed(req.texts)
        except EmbeddingsUnsupported as exc:
            self.send(Failed(req.request_id, str(exc), code="embeddings_unsupported"))
            return
        except GenerationError as exc:
            self.send(Failed(req.request_id, str(exc), code="context_length"
                             if "context" in str(exc) else "invalid_request"))
            return
        self.send(Embeddings(req.request_id, vectors, n_tokens))


def serve(requests: Connection, events: Connection, stop: Any, consumed: Any) -> None:
    """The child's main loop: answer requests until Shutdown or the parent goes away.
    ``stop`` holds, per lane, the id of the request to stop; ``consumed`` counts, per lane, the
    events of the running reply that the parent has read. While replies run, requests are
    taken between tokens; otherwise the loop waits for the next one."""
    from app.engine.child import exit_with_parent

    exit_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what it means
    # (stop the reply, shut this process down); dying here would lose the reply's end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send = _Sender(events)
    root = logging.getLogger()
    root.handlers[:] = [_LogForwarder(send)]
    root.setLevel(logging.INFO)
    sys.stderr = _StderrToLog()
    llama_log.install()
    # the C token loop polls the connection itself where it can (not Windows' pipe handles)
    host = _Host(send, stop, consumed, requests.fileno() if os.name == "posix" else -1)
    waiting = _request_waiting(requests)
    try:
        while True:
            try:
                while not host.running or waiting():
                    request = requests.recv()
                    if isinstance(request, Shutdown):
                        return
                    _handle(host, request)
            except (EOFError, OSError):
                return  # the parent is gone
            host.step()
    finally:
        host.unload()


def _request_waiting(requests: Connection) -> Callable[[], bool]:
    """Whether a request (or the parent's end) is waiting, asked between tokens.

    ``Connection.poll`` builds a selector at every call, some 20 µs: on a fast model that cost
    the loop 8% of its tokens. A poll object registered once answers in about a microsecond.
    Windows pipes cannot be polled that way: ``Connection.poll`` there."""
    try:
        import select

        poller = select.poll()
        poller.register(requests.fileno(), select.POLLIN)
    except (AttributeError, OSError):
        return requests.poll
    return lambda: bool(poller.poll(0))  # POLLHUP too: recv() then says the parent is gone


def _handle(host: _Host, request: object) -> None:
    if isinstance(request, Load):
        host.load(request.settings)
    elif isinstance(request, Chat):
        host.chat(request)
    elif isinstance(request, Embed):
        host.embed(request)
    elif isinstance(request, Unload):
        host.unload()
        host.send(Unloaded())
    elif isinstance(request, Forget):
        host.forget()
