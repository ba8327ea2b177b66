"""Hardware page: what this machine can run, and the details behind that answer; the other
machines whose devices loads may use (llama.cpp's RPC servers), and sharing this one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import capacity, load_stats, store_reads
from app.core import settings as settings_store
from app.core.hardware import HardwareProfile, LlamaBuild, RemoteServer, advice
from app.core.settings import Settings
from app.core.units import format_bytes
from app.jobs import rpc
from app.jobs.task import Task
from app.ui.widgets import Card, page_title, text_label


def _memory(free: int | None, total: int | None) -> str:
    return f"{format_bytes(free)} free of {format_bytes(total)}"


class HardwarePage(QWidget):
    """Summary card ("models up to about N B parameters…") and a tree of details."""

    profile_ready = Signal(object)

    def __init__(self, probe: Callable[[], HardwareProfile], settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._probe = probe
        # The window's settings object (it saves them); without one, the page keeps its own
        # copy and writes the RPC settings itself.
        self._owns_settings = settings is None
        self.settings = settings if settings is not None else settings_store.load()
        self.profile: HardwareProfile | None = None
        self.server: rpc.RpcServer | None = None

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        outer.addWidget(scroll)
        content = QWidget()
        scroll.setWidget(content)
        layout = QVBoxLayout(content)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(14)

        header = QHBoxLayout()
        header.addWidget(page_title("Hardware"))
        header.addStretch()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        header.addWidget(self.refresh_button)
        layout.addLayout(header)

        self.summary = Card("Looking at this machine…")
        self.summary_detail = text_label("", "Muted")
        self.summary.body.addWidget(self.summary_detail)
        self.advice_label = text_label("", "Warning")
        self.advice_label.hide()
        self.summary.body.addWidget(self.advice_label)
        self.estimates_label = text_label("", "Muted")
        self.estimates_label.setToolTip("Each model load compares QuantDesk's memory estimate "
                                        "with the memory the engine measured")
        self.summary.body.addWidget(self.estimates_label)
        layout.addWidget(self.summary)

        details = Card("Details")
        self.details = QTreeWidget()
        self.details.setHeaderLabels(["", ""])
        self.details.setHeaderHidden(True)
        self.details.setColumnCount(2)
        self.details.setMinimumHeight(320)
        details.body.addWidget(self.details)
        layout.addWidget(details)
        layout.addWidget(self._machines_card())
        layout.addWidget(self._share_card())
        layout.addStretch()

    # --- other machines -------------------------------------------------------------------

    def _machines_card(self) -> Card:
        card = Card("Other machines")
        card.body.addWidget(text_label(
            "Machines running llama.cpp's RPC server ('quantdesk rpc-serve', or Share this "
            "machine on their Hardware page) lend their memory and devices: loads place layers "
            "there too. One address:port each, separated by commas.", "Muted"))
        row = QHBoxLayout()
        self.endpoints_edit = QLineEdit(", ".join(self.settings.rpc_servers))
        self.endpoints_edit.setPlaceholderText(f"192.168.1.20:{rpc.DEFAULT_PORT}")
        self.endpoints_edit.returnPressed.connect(self.apply_endpoints)
        row.addWidget(self.endpoints_edit, 1)
        self.endpoints_button = QPushButton("Use")
        self.endpoints_button.clicked.connect(self.apply_endpoints)
        row.addWidget(self.endpoints_button)
        card.body.addLayout(row)
        self.machines_label = text_label("", "Muted")
        card.body.addWidget(self.machines_label)
        return card

    def apply_endpoints(self) -> None:
        """Check the typed addresses, keep them in the settings, read the servers again."""
        typed = [t.strip() for t in self.endpoints_edit.text().split(",") if t.strip()]
        try:
            endpoints = list(dict.fromkeys(rpc.normalize(t) for t in typed))
        except ValueError as exc:
            self.machines_label.setText(str(exc))
            return
        self.endpoints_edit.setText(", ".join(endpoints))
        self.settings.rpc_servers = endpoints
        self._save()
        self.refresh()

    def _show_machines(self, servers: tuple[RemoteServer, ...]) -> None:
        if not servers:
            self.machines_label.setText("None: models load on this machine only.")
            return
        lines = []
        for server in servers:
            if not server.usable:
                lines.append(f"{server.endpoint}: {server.problem or 'no devices'}")
            lines += [f"{d.name} at {d.endpoint}: {_memory(d.memory_free, d.memory_total)}"
                      for d in server.devices]
        self.machines_label.setText("\n".join(lines))

    # --- sharing this machine -------------------------------------------------------------

    def _share_card(self) -> Card:
        card = Card("Share this machine")
        card.body.addWidget(text_label(
            "Lend this machine's memory and devices to QuantDesk on another machine, through "
            "llama.cpp's RPC server. 127.0.0.1 keeps it to this machine; to reach it from "
            "others, listen on a network address (0.0.0.0: all).", "Muted"))
        row = QHBoxLayout()
        self.share_host = QLineEdit(self.settings.rpc_share_host)
        self.share_host.textChanged.connect(self._share_host_changed)
        row.addWidget(self.share_host, 1)
        self.share_port = QSpinBox()
        self.share_port.setRange(1, 65535)
        self.share_port.setValue(self.settings.rpc_share_port)
        row.addWidget(self.share_port)
        self.share_button = QPushButton("Start sharing")
        self.share_button.clicked.connect(self.toggle_sharing)
        row.addWidget(self.share_button)
        card.body.addLayout(row)
        self.share_warning = text_label(rpc.SECURITY_WARNING, "Warning")
        self.share_warning.setVisible(not rpc.is_loopback(self.settings.rpc_share_host))
        card.body.addWidget(self.share_warning)
        self.share_status = text_label("Not shared.", "Muted")
        card.body.addWidget(self.share_status)
        return card

    def _share_host_changed(self, host: str) -> None:
        self.share_warning.setVisible(not rpc.is_loopback(host.strip()))

    def toggle_sharing(self) -> None:
        """Start the RPC server child, or stop it."""
        self.share_button.setEnabled(False)
        if self.server is not None:
            server, self.server = self.server, None
            task = Task(server.stop)
            task.finished.connect(lambda _r: self._shared(None))
            task.failed.connect(self._share_failed)
            task.start()
            return
        host, port = self.share_host.text().strip() or rpc.LOCAL_HOST, self.share_port.value()
        self.settings.rpc_share_host, self.settings.rpc_share_port = host, port
        self._save()
        self.share_status.setText(f"Starting on {host}:{port}…")
        task = Task(lambda: rpc.RpcServer(host, port).start())
        task.finished.connect(self._shared)
        task.failed.connect(self._share_failed)
        task.start()

    def _shared(self, server: rpc.RpcServer | None) -> None:
        self.server = server
        self.share_button.setEnabled(True)
        self.share_button.setText("Stop sharing" if server else "Start sharing")
        self.share_host.setEnabled(server is None)
        self.share_port.setEnabled(server is None)
        self.share_status.setText(
            f"Shared at {server.host}:{server.port}: add this machine's address and port "
            f"{server.port} to the other machine's list. A server takes one client at a time."
            if server else "Not shared.")

    def _share_failed(self, message: str) -> None:
        self.server = None
        self.share_button.setEnabled(True)
        self.share_button.setText("Start sharing")
        self.share_host.setEnabled(True)
        self.share_port.setEnabled(True)
        self.share_status.setText(message)

    def stop_sharing(self) -> None:
        """End the server child now (the window closes, or a test ends)."""
        if self.server is not None:
            self.server.stop()
            self._shared(None)

    def _save(self) -> None:
        if self._owns_settings:
            settings_store.save(self.settings)

    def refresh(self) -> None:
        """Probe again in the background (llama.cpp's devices are read in a child process)."""
        self.refresh_button.setEnabled(False)
        self.summary.title.setText("Looking at this machine…")
        endpoints = list(self.settings.rpc_servers)
        probe = self._probe

        def read() -> HardwareProfile:
            profile = probe()
            return replace(profile, remote=rpc.remote_servers(endpoints)) if endpoints \
                else profile

        task = Task(read)
        task.finished.connect(self._show)
        task.failed.connect(self._failed)
        task.start()

    def _failed(self, message: str) -> None:
        self.refresh_button.setEnabled(True)
        self.summary.title.setText("The hardware could not be read")
        self.summary_detail.setText(message)

    def _show(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self.refresh_button.setEnabled(True)
        self.summary.title.setText(capacity.largest_model(profile).sentence())
        gpus = profile.gpus
        gpu_text = (", ".join(f"{g.description or g.name} ({format_bytes(g.memory_free)} free)"
                              for g in gpus) if gpus else "no GPU that llama.cpp can use")
        self.summary_detail.setText(
            f"{profile.cpu.model} · {profile.cpu.logical_cores} threads · "
            f"{format_bytes(profile.ram_total)} RAM ({format_bytes(profile.ram_available)} free) · "
            f"{gpu_text}"
        )
        tips = advice(profile)
        self.advice_label.setText("\n\n".join(tips))
        self.advice_label.setVisible(bool(tips))
        self._fill_details(profile)
        self._show_machines(profile.remote)
        self.refresh_estimates()
        self.profile_ready.emit(profile)

    def refresh_estimates(self) -> None:
        """Read how far the memory estimates have been from reality here, in the background."""
        task = Task(lambda: store_reads.read(load_stats.error_summary))
        task.finished.connect(self._show_estimates)
        task.failed.connect(self.estimates_label.setText)
        task.start()

    def _show_estimates(self, summary: load_stats.ErrorSummary) -> None:
        self.estimates_label.setText(summary.sentence())

    def _fill_details(self, p: HardwareProfile) -> None:
        tree = self.details
        tree.clear()

        def section(title: str, rows: list[tuple[str, str]]) -> None:
            item = QTreeWidgetItem([title, ""])
            for key, value in rows:
                child = QTreeWidgetItem([key, value])
                child.setToolTip(1, value)  # long values (build features) are elided
                item.addChild(child)
            tree.addTopLevelItem(item)
            item.setExpanded(True)

        section("Processor", [
            ("Model", p.cpu.model),
            ("Architecture", p.cpu.arch),
            ("Cores", f"{p.cpu.physical_cores} physical, {p.cpu.logical_cores} logical"),
            ("Features", " ".join(p.cpu.features) or "none detected"),
        ])
        section("Memory", [("RAM", _memory(p.ram_available, p.ram_total))])
        if p.apple:
            section("Apple Silicon", [
                ("Chip", p.apple.chip),
                ("Unified memory", format_bytes(p.apple.unified_memory)),
                ("Usable by the GPU", format_bytes(p.apple.gpu_usable_memory)),
            ])
        for g in p.nvml:
            section(f"NVIDIA {g.name}", [
                ("Memory", _memory(g.memory_free, g.memory_total)),
                ("Driver", g.driver),
                ("Compute capability", g.compute_capability or "unknown"),
            ])
        if p.llama:
            rows = [("Version", p.llama.version), ("Backends", ", ".join(p.llama.backends)),
                    ("GPU offload", _offload(p.llama))]
            rows += [(f"Device {d.name}", f"{d.description} [{d.kind}] — "
                      f"{_memory(d.memory_free, d.memory_total)}") for d in p.llama.devices]
            rows.append(("Build features", p.llama.system_info))
            rows.append(("RPC (other machines)", "yes" if p.llama.has_rpc else
                         "no: built without GGML_RPC=ON"))
            section("llama.cpp", rows)
        if p.remote:
            rows = []
            for server in p.remote:
                if not server.usable:
                    rows.append((server.endpoint, server.problem or "no devices"))
                rows += [(f"{d.name} at {d.endpoint}", _memory(d.memory_free, d.memory_total))
                         for d in server.devices]
            section("Other machines (RPC)", rows)
        if p.notes:
            section("Notes", [("", n) for n in p.notes])
        tree.resizeColumnToContents(0)


def _offload(llama: LlamaBuild) -> str:
    """Whether layers can leave this CPU. llama.cpp says yes for a build with the RPC backend
    even without a local GPU: then the only place they can go is another machine."""
    if not llama.supports_gpu_offload:
        return "no"
    if any(d.kind in ("gpu", "igpu") for d in llama.devices):
        return "yes"
    return "to other machines only (RPC): no local GPU backend" if llama.has_rpc else "yes"
