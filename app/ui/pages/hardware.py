"""Hardware page: what this machine can run, and the details behind that answer."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import capacity, load_stats, store_reads
from app.core.hardware import HardwareProfile, advice
from app.core.units import format_bytes
from app.jobs.task import Task
from app.ui.widgets import Card, page_title, text_label


def _memory(free: int | None, total: int | None) -> str:
    return f"{format_bytes(free)} free of {format_bytes(total)}"


class HardwarePage(QWidget):
    """Summary card ("models up to about N B parameters…") and a tree of details."""

    profile_ready = Signal(object)

    def __init__(self, probe: Callable[[], HardwareProfile], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._probe = probe
        self.profile: HardwareProfile | None = None

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
        layout.addStretch()

    def refresh(self) -> None:
        """Probe again in the background (llama.cpp's devices are read in a child process)."""
        self.refresh_button.setEnabled(False)
        self.summary.title.setText("Looking at this machine…")
        task = Task(self._probe)
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
                    ("GPU offload", "yes" if p.llama.supports_gpu_offload else "no")]
            rows += [(f"Device {d.name}", f"{d.description} [{d.kind}] — "
                      f"{_memory(d.memory_free, d.memory_total)}") for d in p.llama.devices]
            rows.append(("Build features", p.llama.system_info))
            section("llama.cpp", rows)
        if p.notes:
            section("Notes", [("", n) for n in p.notes])
        tree.resizeColumnToContents(0)
