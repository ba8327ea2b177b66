"""The Server page: start on the chat's engine, answer a real request, log it, stop."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from pytestqt.qtbot import QtBot

from app.core.settings import Settings
from app.jobs.engine_client import EngineClient
from app.ui.pages.server import ServerPage


def _page(qtbot: QtBot, model: Path, engines: list[EngineClient]
          ) -> tuple[ServerPage, EngineClient]:
    """A Server page on a fresh engine, offering ``model``, on any free port."""
    engine = EngineClient()
    engines.append(engine)
    page = ServerPage(engine, Settings(n_ctx=512, threads=1), model, "Tiny")
    qtbot.addWidget(page)
    page.port.setValue(0)
    return page, engine


def _start(qtbot: QtBot, page: ServerPage) -> None:
    with qtbot.waitSignal(page.running_changed, timeout=30_000):
        page.start()


def test_the_page_serves_the_chosen_model_and_logs_requests(
        qtbot: QtBot, tiny_model: Path, engines: list[EngineClient]) -> None:
    page, engine = _page(qtbot, tiny_model, engines)
    # a network address without a key is refused, and the page says why
    page.host.setCurrentText("0.0.0.0")
    assert page.network_warning.isVisibleTo(page)
    page.start()
    assert not page.running and "API key" in page.status.text()
    page.host.setCurrentText("127.0.0.1")
    assert not page.network_warning.isVisibleTo(page)
    with qtbot.waitSignal(page.running_changed, timeout=30_000) as started:
        page.start()  # loads the model in the shared engine, then serves
    assert started.args == [True] and engine.current is not None
    url = page.address.text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert "from openai import OpenAI" in page.examples.toPlainText()
    reply = httpx.post(f"{url}/chat/completions", timeout=30, json={
        "model": tiny_model.stem, "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    qtbot.waitUntil(lambda: page.table.rowCount() == 1 and
                    page.table.item(0, 7).text() == "200", timeout=5_000)
    assert page.table.item(0, 2).text() == "chat/completions"
    assert page.table.item(0, 4).text() == "4"
    with qtbot.waitSignal(page.running_changed) as stopped:
        page.stop()
    assert stopped.args == [False]
    try:
        httpx.get(f"{url}/models", timeout=2)
        raise AssertionError("the server still answers after Stop")
    except httpx.ConnectError:
        pass


def test_a_model_loaded_by_the_chat_is_what_the_page_says_it_serves(
        qtbot: QtBot, tiny_model: Path, tiny_model_f16: Path,
        engines: list[EngineClient]) -> None:
    from app.engine.protocol import LoadSettings

    page, engine = _page(qtbot, tiny_model, engines)
    _start(qtbot, page)
    assert page.status.text().startswith(f"Serving {tiny_model.name} at ")
    # the Chat page loads another model into the shared engine
    engine.load(LoadSettings(str(tiny_model_f16), n_ctx=512))
    qtbot.waitUntil(lambda: tiny_model_f16.name in page.status.text(), timeout=30_000)
    assert "Chat page loaded it" in page.status.text()
    assert f'"model": "{tiny_model_f16.stem}"' in page.examples.toPlainText()
    models = httpx.get(f"{page.address.text()}/models", timeout=10).json()
    assert models["data"][0]["id"] == tiny_model_f16.stem  # what the page says is true
    page.stop()



def test_the_page_offers_the_loaded_model_until_one_is_chosen_here(
        qtbot: QtBot, tiny_model: Path, tiny_model_f16: Path,
        engines: list[EngineClient]) -> None:
    from app.engine.protocol import LoadSettings

    page, engine = _page(qtbot, tiny_model, engines)
    # the chat (or the wizard's "Chat with it") loads a model: the page offers it
    with qtbot.waitSignal(engine.loaded, timeout=30_000):
        engine.load(LoadSettings(str(tiny_model_f16), n_ctx=512, n_threads=1))
    assert page.model.currentData() == str(tiny_model_f16)
    assert f'"model": "{tiny_model_f16.stem}"' in page.examples.toPlainText()
    page.port.setValue(8123)  # the address shown is the one Start would use
    assert page.address.text() == "http://127.0.0.1:8123/v1"
    page.port.setValue(0)
    loads: list[object] = []
    engine.loaded.connect(loads.append)
    _start(qtbot, page)  # serves what is loaded: no reload
    assert not loads and f"Serving {tiny_model_f16.name} at " in page.status.text()
    page.stop()
    # a model chosen here stays chosen when the chat loads another
    page.model.setCurrentIndex(page.model.findData(str(tiny_model)))
    page.model.activated.emit(page.model.currentIndex())  # as a click in the list does
    with qtbot.waitSignal(engine.loaded, timeout=30_000):
        engine.load(LoadSettings(str(tiny_model_f16), n_ctx=256, n_threads=1))
    assert page.model.currentData() == str(tiny_model)


def test_replies_at_once_reloads_the_model_with_that_many_sequences(
        qtbot: QtBot, tiny_model: Path, engines: list[EngineClient]) -> None:
    page, engine = _page(qtbot, tiny_model, engines)
    _start(qtbot, page)
    assert engine.current is not None and engine.current.n_parallel == 1
    page.stop()
    page.parallel.setValue(3)  # the same model, served three replies at a time: a reload
    _start(qtbot, page)
    assert engine.current is not None and engine.current.n_parallel == 3
    assert "3 replies at once" in page.status.text()
    page.stop()


def test_the_page_starts_as_it_last_served(
        qtbot: QtBot, tiny_model: Path, tiny_model_f16: Path,
        engines: list[EngineClient]) -> None:
    page, _ = _page(qtbot, tiny_model, engines)
    page.add_model(tiny_model_f16)
    page.model.setCurrentIndex(page.model.findData(str(tiny_model_f16)))
    page.parallel.setValue(2)
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    page.port.setValue(port)
    _start(qtbot, page)
    page.stop()
    # the window saves these settings when it closes; the next run's page shows them

    def next_run() -> ServerPage:
        engine = EngineClient()
        engines.append(engine)
        again = ServerPage(engine, page.settings, tiny_model, "Tiny")
        qtbot.addWidget(again)
        return again

    again = next_run()
    assert again.model.currentData() == str(tiny_model_f16)
    assert (again.parallel.value(), again.port.value()) == (2, port)
    assert again.host.currentText() == "127.0.0.1"
    assert not again.network_warning.isVisibleTo(again)
    # a network address remembered shows its warning from the start
    page.settings.server_host = "0.0.0.0"
    third = next_run()
    assert third.network_warning.isVisibleTo(third)
