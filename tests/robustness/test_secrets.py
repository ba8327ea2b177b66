"""The Hugging Face token goes to the keyring and nowhere else (DESIGN: "Secrets"): after a session
that used it every way the app does, it appears in no file QuantDesk wrote and in no output.

The session: the token is saved through ``app.hub.token`` (an in-memory keyring, never this
machine's); a pipeline run downloads a private model with it from the local hub and evaluates
it; a download that the hub refuses (401) fails; a step fails with an unexpected error, so its
traceback is logged; settings are saved; the stored evaluation is exported as HTML, JSON and
CSV. Logging is the app's own (``app.core.logsetup``) at DEBUG, so that huggingface-hub's and
the HTTP client's debug lines are written too. Then every file under the data folder (logs,
the database with its -wal and -shm, settings.json, caches, models) and under the export
folder, and everything written to stdout and stderr by the test process and its children, is
searched for the token, for its secret part without 'hf_', and for its Base64 form.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core import logsetup, paths, report
from app.core import runs as R
from app.core import settings as settings_store
from app.core.storage import Storage
from app.hub import token as hub_token
from app.hub.download import target_path
from app.pipeline import events as ev
from app.pipeline import plans
from app.pipeline.runner import Runner
from app.pipeline.texts import TextSource
from tests.helpers.memory_keyring import MemoryKeyring, memory_keyring
from tests.helpers.token_hub import TokenHub

TOKEN = "hf_QdTestSecret7Kx2Vw9Lm4Pz8Rt1Yb6Nc3Hj5"
PRIVATE = "org/private-GGUF"
REFUSED = "org/refused-GGUF"
MODEL = "tiny-llama-F32.gguf"


@pytest.fixture
def keyring_in_memory() -> Iterator[MemoryKeyring]:
    with memory_keyring() as backend:
        yield backend


@dataclass
class AppLogging:
    folder: Path  # the logs folder
    console: io.StringIO  # what the console handler (warnings and errors) wrote

    def file_text(self) -> str:
        for handler in logging.getLogger().handlers:
            handler.flush()
        return "\n".join(p.read_text() for p in self.folder.iterdir())


@pytest.fixture
def app_logging() -> Iterator[AppLogging]:
    """The app's logging (a file under the logs folder, warnings to stderr) at DEBUG, set up
    for this test and taken down after it. The console handler writes into a buffer the test
    reads (the stderr it was made with belongs to pytest's capture of the setup phase)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configured = getattr(root, "_quantdesk_configured", False)
    root._quantdesk_configured = False  # type: ignore[attr-defined]
    logsetup.configure(logging.DEBUG)
    console = io.StringIO()
    for handler in root.handlers:
        if handler not in handlers and type(handler) is logging.StreamHandler:
            handler.setStream(console)
    try:
        yield AppLogging(paths.logs_dir(), console)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        root._quantdesk_configured = configured  # type: ignore[attr-defined]


@pytest.fixture
def hub(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenHub]:
    from huggingface_hub import constants

    h = TokenHub(token=TOKEN)
    h.add(PRIVATE, MODEL, tiny_model.read_bytes())
    h.private.add(PRIVATE)
    h.add(REFUSED, MODEL, tiny_model.read_bytes())
    h.errors[REFUSED] = 401
    h.start()
    # Pipeline steps ask the hub the app is configured for: HF_ENDPOINT, which huggingface-hub
    # reads when it is imported (long before this test), into these two constants.
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", h.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        h.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield h
    h.stop()


def _download_step(repo_id: str, dest: Path) -> plans.StepSpec:
    return plans.StepSpec("download", "download", f"Download {MODEL}",
                          {"repo_id": repo_id, "files": [MODEL], "dest": str(dest)})


def _run(store: Storage, plan: plans.RunPlan) -> tuple[list[ev.Event], Exception | None]:
    events: list[ev.Event] = []
    try:
        for event in Runner().run(plans.create(store, plan)):
            events.append(event)
    except ev.PipelineError as exc:
        return events, exc
    return events, None


def _leaks(data: bytes) -> list[str]:
    forms = {"token": TOKEN, "secret part": TOKEN.removeprefix("hf_"),
             "Base64": base64.b64encode(TOKEN.encode()).decode()}
    return [name for name, form in forms.items() if form.encode() in data]


def test_the_token_appears_in_no_file_and_no_output(
        keyring_in_memory: MemoryKeyring, app_logging: AppLogging, hub: TokenHub,
        tiny_model_f16: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    hub_token.set_token(TOKEN)
    assert keyring_in_memory.store == {(hub_token.SERVICE, hub_token.ACCOUNT): TOKEN}
    store = Storage()  # held open to the end, so that the database's -wal file is searched too
    models = paths.models_dir()

    # a run that downloads the private model with the token, then measures it
    downloaded = target_path(models, PRIVATE, MODEL)
    steps = [_download_step(PRIVATE, models), *plans.evaluation_steps(
        downloaded, [("F16", tiny_model_f16)], TextSource.evaluation(), chunks=2, speed_reps=0,
        title="private model", n_ctx=128)]
    events, error = _run(store, plans.RunPlan("evaluate", "private model", tuple(steps)))
    assert error is None, error
    assert downloaded.read_bytes() == hub.files[(PRIVATE, MODEL)].data
    assert any(p.startswith(f"/{PRIVATE}/resolve/") for p in hub.requests_with_token)
    finished = events[-1]
    assert isinstance(finished, ev.RunFinished)
    evaluation_id = finished.outputs["summary"]["evaluation_id"]

    # a download the hub refuses with 401, the token sent (the hub says "not found" then, as
    # Hugging Face does for a private repo the token cannot see)
    before = len(hub.requests_with_token)
    events, error = _run(store, plans.RunPlan("download", "refused", (
        _download_step(REFUSED, models),)))
    assert isinstance(error, ev.PipelineError) and "Hugging Face token" in str(error)
    assert any(p.startswith(f"/{REFUSED}/") for p in hub.requests_with_token[before:])

    # a step that fails unexpectedly after using the token: its traceback goes to the log
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("a file where the models folder should be")
    events, error = _run(store, plans.RunPlan("download", "broken", (
        _download_step(PRIVATE, not_a_folder),)))
    assert error is not None
    settings_store.save(settings_store.load())

    # exports of the stored evaluation
    stored = store.evaluation(evaluation_id)
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "report.html").write_text(report.to_html(stored.result, {}, stored.votes))
    (exports / "report.json").write_text(report.to_json(stored.result, stored.votes))
    (exports / "report.csv").write_text(report.to_csv(report.rows(stored.result)))

    log_text = app_logging.file_text()
    assert "Traceback" in log_text  # the unexpected failure was logged with its traceback
    assert f"{REFUSED}/{MODEL} was not found" in log_text  # and the refusal
    assert "httpcore" in log_text  # the HTTP client's debug lines are in the file
    database = paths.database_path()
    searched = [p for p in paths.data_home().rglob("*") if p.is_file()]
    assert {database, Path(f"{database}-wal"), paths.settings_path()} <= set(searched)
    searched += sorted(exports.iterdir())
    found = {str(p): leaks for p in searched if (leaks := _leaks(p.read_bytes()))}
    output = capfd.readouterr()  # this process's and its children's stdout and stderr
    console = app_logging.console.getvalue()
    assert "step download of run 3 failed" in console and "Traceback" in console
    found.update({name: leaks for name, text in (("stdout", output.out),
                                                  ("stderr", output.err),
                                                  ("console log", console))
                  if (leaks := _leaks(text.encode()))})
    assert [bool(r.error) for r in R.RunStore(store).runs()] == [True, True, False]  # searched
    store.close()
    assert found == {}


def test_a_token_quoted_in_a_log_line_or_a_traceback_is_written_redacted(
        keyring_in_memory: MemoryKeyring, app_logging: AppLogging) -> None:
    """What the app logs can quote what it did not write: a server's error text, a library's
    dump of a request. The log handlers hide the token the app knows (whatever its shape) and
    anything shaped like a Hugging Face token or a Bearer authorization."""
    odd = "hf_odd-shaped.token~42"  # set_token accepts it; no pattern would recognise it
    hub_token.set_token(odd)
    log = logging.getLogger("app.hub.quoted")
    log.warning("request headers: %s", {"authorization": f"Bearer {TOKEN}"})
    log.info("the keyring gave %s", hub_token.get_token())
    try:
        raise RuntimeError(f"the server echoed the header: Bearer {TOKEN} and {odd}")
    except RuntimeError:
        log.exception("a call failed")
    text = app_logging.file_text()
    assert "request headers: {'authorization': 'Bearer <redacted>'}" in text
    assert "the keyring gave <redacted>" in text
    assert "Traceback" in text
    assert "RuntimeError: the server echoed the header: Bearer <redacted> and <redacted>" in text
    leaks = _leaks(text.encode()) + [odd] * (odd in text)
    console = app_logging.console.getvalue()
    assert "request headers" in console  # the console handler (warnings) redacts too
    leaks += _leaks(console.encode()) + [odd] * (odd in console)
    assert leaks == []
