"""The Hardware page's other machines and sharing: a real RPC server child started from the
page, listed with its memory once its address is added, and a plain warning for a network
address."""

from __future__ import annotations

import socket

from pytestqt.qtbot import QtBot

from app.core import hardware
from app.core import settings as settings_store
from app.ui.pages.hardware import HardwarePage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_share_this_machine_then_use_it_as_another(qtbot: QtBot) -> None:
    page = HardwarePage(lambda: hardware.probe())
    qtbot.addWidget(page)
    try:
        assert page.share_host.text() == "127.0.0.1" and page.share_warning.isHidden()
        page.share_host.setText("0.0.0.0")
        assert not page.share_warning.isHidden()
        assert "no authentication and no encryption" in page.share_warning.text()
        page.share_host.setText("127.0.0.1")
        port = _free_port()
        page.share_port.setValue(port)
        page.share_button.click()
        qtbot.waitUntil(lambda: page.server is not None, timeout=30_000)
        assert page.share_button.text() == "Stop sharing"
        assert f"127.0.0.1:{port}" in page.share_status.text()

        down = f"127.0.0.1:{_free_port()}"
        page.endpoints_edit.setText(f"127.0.0.1:{port}, {down}")
        page.apply_endpoints()
        qtbot.waitUntil(lambda: page.profile is not None and bool(page.profile.remote),
                        timeout=30_000)
        text = page.machines_label.text()
        assert f"RPC0 at 127.0.0.1:{port}:" in text and "free of" in text
        assert f"{down}: The RPC server at {down} cannot be reached" in text
        (usable,) = page.profile.remote_devices
        assert usable.memory_total > 0
        assert settings_store.load().rpc_servers == [f"127.0.0.1:{port}", down]

        page.endpoints_edit.setText("not an address")
        page.apply_endpoints()
        assert "is not host:port" in page.machines_label.text()

        page.share_button.click()
        qtbot.waitUntil(lambda: page.share_button.text() == "Start sharing", timeout=10_000)
        assert page.server is None and page.share_status.text() == "Not shared."
    finally:
        page.stop_sharing()
