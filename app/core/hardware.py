"""What this machine has: CPU and its features, RAM, GPUs, and what llama.cpp can use of them.

Each source (the OS, NVML, PCI listing, llama.cpp's device list) may fail on its own; a failure
becomes a line in ``HardwareProfile.notes``, never an exception that stops the app. The parsers
take plain text or simple objects so that cases this machine lacks are tested with canned input.

llama.cpp's own view (its backends and devices) is read by ``app.engine.devices`` in a child
process and handed in here as a ``LlamaBuild``: this module does not load llama.cpp.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

log = logging.getLogger(__name__)

GIB = 1024**3

# Canonical feature names, in the order they are shown.
X86_FEATURES = ("SSE3", "SSSE3", "AVX", "AVX2", "FMA", "F16C", "AVX_VNNI", "AVX512F", "AVX512BW",
                "AVX512VL", "AVX512_VNNI", "AVX512_VBMI", "AVX512_BF16", "AMX_INT8")
ARM_FEATURES = ("NEON", "DOTPROD", "I8MM", "SVE", "SME", "FP16")

_LINUX_FLAGS = {
    "pni": "SSE3", "ssse3": "SSSE3", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C",
    "avx_vnni": "AVX_VNNI", "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512vl": "AVX512VL",
    "avx512_vnni": "AVX512_VNNI", "avx512vnni": "AVX512_VNNI", "avx512_vbmi": "AVX512_VBMI",
    "avx512vbmi": "AVX512_VBMI", "avx512_bf16": "AVX512_BF16", "amx_int8": "AMX_INT8",
    # Arm (the "Features" line)
    "asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "I8MM", "sve": "SVE", "sme": "SME",
    "asimdhp": "FP16",
}
_MAC_ARM_SYSCTL = {
    "hw.optional.neon": "NEON", "hw.optional.arm.FEAT_DotProd": "DOTPROD",
    "hw.optional.arm.FEAT_I8MM": "I8MM", "hw.optional.arm.FEAT_SME": "SME",
    "hw.optional.arm.FEAT_FP16": "FP16",
}
# Windows IsProcessorFeaturePresent ids.
_WINDOWS_FEATURES = {13: "SSE3", 36: "SSSE3", 39: "AVX", 40: "AVX2", 41: "AVX512F",
                     19: "NEON", 43: "DOTPROD"}

PCI_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel", "0x106b": "Apple"}


@dataclass(frozen=True)
class CpuInfo:
    """The processor."""

    model: str
    arch: str
    physical_cores: int | None
    logical_cores: int | None
    features: tuple[str, ...]


@dataclass(frozen=True)
class AppleSilicon:
    """An Apple Silicon chip: memory is shared, and the GPU may use part of it."""

    chip: str
    unified_memory: int
    gpu_usable_memory: int


@dataclass(frozen=True)
class NvmlGpu:
    """An NVIDIA GPU as its driver (NVML) reports it."""

    name: str
    memory_total: int
    memory_free: int
    driver: str
    compute_capability: str | None


@dataclass(frozen=True)
class PciGpu:
    """A display device seen on the PCI bus (Linux), whether or not any driver runs it."""

    vendor: str
    device_id: str


@dataclass(frozen=True)
class BackendDevice:
    """A device as llama.cpp (ggml) enumerates it."""

    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu" or "accel"
    backend: str
    memory_free: int | None
    memory_total: int | None


@dataclass(frozen=True)
class RemoteDevice:
    """A device another machine lends through llama.cpp's RPC server, as llama.cpp reports
    it (the protocol gives its memory, not its kind: a remote CPU and GPU look alike)."""

    endpoint: str  # "host:port" of its server
    index: int  # the device's number on that server
    name: str  # llama.cpp's name for it here: "RPC0", "RPC1"…
    memory_free: int
    memory_total: int


@dataclass(frozen=True)
class RemoteServer:
    """One RPC server the user listed: its devices, or why it cannot be used now."""

    endpoint: str
    devices: tuple[RemoteDevice, ...] = ()
    problem: str | None = None

    @property
    def usable(self) -> bool:
        """Whether a load can place layers there now."""
        return self.problem is None and bool(self.devices)


@dataclass(frozen=True)
class LlamaBuild:
    """What the llama.cpp library that QuantDesk loads was built with, and what it sees."""

    version: str
    backends: tuple[str, ...]
    devices: tuple[BackendDevice, ...]
    system_info: str
    supports_gpu_offload: bool
    problems: tuple[str, ...] = ()  # differences from what the engine relies on (compat)

    @property
    def gpus(self) -> tuple[BackendDevice, ...]:
        """Devices other than the CPU."""
        return tuple(d for d in self.devices if d.kind != "cpu")

    @property
    def has_rpc(self) -> bool:
        """Whether the build has ggml's RPC backend (to use and share devices over a network)."""
        return "RPC" in self.backends

    @property
    def extra_buffers(self) -> bool:
        """Whether the engine loads models with llama.cpp's extra CPU buffer types (weight
        repacking): not with builds that have AMX, whose kernels crash (see
        ``extra_buffers_safe``)."""
        return extra_buffers_safe(self.system_info)


AMX_MARK = "AMX_INT8 = 1"


def extra_buffers_safe(system_info: str) -> bool:
    """Whether llama.cpp's extra CPU buffer types can be used with this build.

    A build with AMX (``AMX_INT8 = 1`` in llama.cpp's system info: a native build on a Xeon
    Sapphire Rapids or later, or the CPU-variant build picking its AMX variant there) repacks
    most quantized weights for its AMX kernels, and ``ggml_backend_amx_mul_mat`` segfaults on
    the first prompt (llama.cpp issue 20824, reproduced here with SmolLM2 Q4_1 on one thread).
    The engine then loads without extra buffer types, which also turns weight repacking off.
    """
    return AMX_MARK not in system_info


@dataclass(frozen=True)
class HardwareProfile:
    """Everything the app knows about the machine, with notes on what could not be read."""

    os: str
    os_version: str
    cpu: CpuInfo
    ram_total: int
    ram_available: int
    apple: AppleSilicon | None = None
    nvml: tuple[NvmlGpu, ...] = ()
    pci_gpus: tuple[PciGpu, ...] = ()
    llama: LlamaBuild | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Other machines' RPC servers from the settings, read by app.engine.rpc (not by probe())
    remote: tuple[RemoteServer, ...] = ()

    @property
    def gpus(self) -> tuple[BackendDevice, ...]:
        """GPUs llama.cpp can use (empty when the build is CPU-only or sees none)."""
        return self.llama.gpus if self.llama else ()

    @property
    def remote_devices(self) -> tuple[RemoteDevice, ...]:
        """Devices of the other machines that can take layers now."""
        return tuple(d for s in self.remote if s.usable for d in s.devices)

    @property
    def repacking_features(self) -> tuple[str, ...]:
        """The CPU features that decide which weights llama.cpp repacks here; none when the
        engine loads without extra buffer types (``LlamaBuild.extra_buffers``)."""
        if self.llama is not None and not self.llama.extra_buffers:
            return ()
        return self.cpu.features

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["advice"] = list(advice(self))
        return data


# ---------------------------------------------------------------------------------------------
# Parsers (pure, tested with canned text)


def parse_linux_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """CPU model name and canonical features from /proc/cpuinfo text (x86 or Arm)."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    found = {_LINUX_FLAGS[f] for f in flags if f in _LINUX_FLAGS}
    return model, _ordered(found)


def parse_macos_sysctl(text: str) -> dict[str, str]:
    """``sysctl -a``-style 'key: value' lines into a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def macos_features(sysctl: dict[str, str]) -> tuple[str, ...]:
    """Canonical features from macOS sysctl values (Apple Silicon or Intel Mac)."""
    found: set[str] = set()
    for key, name in _MAC_ARM_SYSCTL.items():
        if sysctl.get(key) == "1":
            found.add(name)
    if sysctl.get("hw.optional.arm64") == "1":
        found.add("NEON")
    intel = set((sysctl.get("machdep.cpu.features", "") + " " +
                 sysctl.get("machdep.cpu.leaf7_features", "")).lower().replace(".", "_").split())
    intel |= {"pni"} if "sse3" in intel else set()
    intel |= {"avx"} if "avx1_0" in intel else set()
    found |= {_LINUX_FLAGS[f] for f in intel if f in _LINUX_FLAGS}
    return _ordered(found)


def apple_silicon_from_sysctl(sysctl: dict[str, str]) -> AppleSilicon | None:
    """Apple Silicon details, or None on Intel Macs and other systems."""
    chip = sysctl.get("machdep.cpu.brand_string", "")
    if not chip.startswith("Apple") or "hw.memsize" not in sysctl:
        return None
    memory = int(sysctl["hw.memsize"])
    # macOS lets the GPU wire about 2/3 of memory on machines up to 36 GiB and 3/4 above
    # (Metal's recommendedMaxWorkingSetSize); iogpu.wired_limit_mb raises it when set.
    wired_mb = int(sysctl.get("iogpu.wired_limit_mb", "0") or 0)
    share = wired_mb * 1024**2 if wired_mb else (memory * 2 // 3 if memory <= 36 * GIB
                                                  else memory * 3 // 4)
    return AppleSilicon(chip=chip, unified_memory=memory, gpu_usable_memory=share)


def pci_gpus_from_sysfs(drm: Path) -> tuple[PciGpu, ...]:
    """Display devices under /sys/class/drm (Linux): vendor even when no driver is loaded."""
    found: dict[str, PciGpu] = {}
    for card in sorted(drm.glob("card[0-9]*")):
        dev = card / "device"
        try:
            vendor_id = (dev / "vendor").read_text().strip().lower()
            device_id = (dev / "device").read_text().strip().lower()
        except OSError:
            continue
        found[str(dev.resolve())] = PciGpu(PCI_VENDORS.get(vendor_id, vendor_id), device_id)
    return tuple(found.values())


class NvmlLike(Protocol):
    """The part of ``pynvml`` used here (so tests can hand in canned answers)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_nvml(nvml: NvmlLike) -> tuple[NvmlGpu, ...]:
    """NVIDIA GPUs through NVML; raises whatever NVML raises (the caller turns it into a note)."""
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc: str | None = f"{major}.{minor}"
            except Exception:  # older drivers lack it; the GPU is still worth listing
                cc = None
            gpus.append(NvmlGpu(_text(nvml.nvmlDeviceGetName(handle)), int(mem.total),
                                int(mem.free), driver, cc))
        return tuple(gpus)
    finally:
        nvml.nvmlShutdown()


def _ordered(found: set[str]) -> tuple[str, ...]:
    order = X86_FEATURES + ARM_FEATURES
    return tuple(f for f in order if f in found)


# ---------------------------------------------------------------------------------------------
# Advice


def _pip_rebuild(flags: str, version: str) -> str:
    """A pip command that rebuilds the installed llama-cpp-python with ``flags``: the same
    version (an unpinned install takes the newest, which QuantDesk is not tested with) and the
    RPC backend QuantDesk's own build has (running a model across machines)."""
    return (f'CMAKE_ARGS="{flags} -DGGML_RPC=ON" pip install --force-reinstall --no-cache-dir '
            f"llama-cpp-python=={version}")


def _gpu_rebuild(flags: str, version: str, needs: str) -> str:
    """How to get a llama.cpp build with a GPU backend: from a source checkout through make
    (packaging/llama-wheel.sh: RPC on, AMX off, its compilers checked), else with pip."""
    return (f'From a source checkout: make run CMAKE_ARGS="{flags}"; with pip: '
            f"{_pip_rebuild(flags, version)} ({needs}).")


def advice(profile: HardwareProfile) -> tuple[str, ...]:
    """What a user should know: GPUs llama.cpp cannot use with this build, and how to fix it."""
    lines: list[str] = []
    backends = {b.lower() for b in profile.llama.backends} if profile.llama else set()
    if profile.llama is None:
        return ("llama.cpp could not be loaded, so QuantDesk cannot see which devices it can "
                "use. Reinstall with 'pip install --force-reinstall llama-cpp-python'.",)
    version = profile.llama.version
    nvidia = [g.name for g in profile.nvml] or [
        "an NVIDIA GPU" for g in profile.pci_gpus if g.vendor == "NVIDIA"]
    if nvidia and "cuda" not in backends:
        lines.append(
            f"{nvidia[0]} is present but this llama.cpp build has no CUDA backend, so models run "
            "on the CPU only. To use the GPU, take QuantDesk's CUDA installer, or rebuild. "
            + _gpu_rebuild("-DGGML_CUDA=on", version, "needs the CUDA toolkit"))
    if profile.apple is not None and "metal" not in backends:
        lines.append(
            "This Apple Silicon Mac's GPU is unused: this llama.cpp build has no Metal backend. "
            + _gpu_rebuild("-DGGML_METAL=on", version, "needs Xcode's command-line tools"))
    others = [g.vendor for g in profile.pci_gpus if g.vendor in ("AMD", "Intel")]
    if others and not profile.gpus and not nvidia:
        lines.append(
            f"An {others[0]} GPU is present but llama.cpp uses none: a Vulkan build can use it. "
            + _gpu_rebuild("-DGGML_VULKAN=on", version, "needs the Vulkan SDK"))
    if profile.llama.problems:
        lines.append("This llama-cpp-python differs from the one QuantDesk is tested with, so "
                     "some features will fail: " + "; ".join(profile.llama.problems) + ".")
    if not profile.llama.extra_buffers:
        lines.append(
            "This llama.cpp build has AMX kernels, which crash on quantized models (llama.cpp "
            "issue 20824), so QuantDesk loads models without them and without weight "
            "repacking. For the repacked weights' speed, rebuild without AMX: "
            + _pip_rebuild("-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON", version)
            + ".")
    return tuple(lines)


# ---------------------------------------------------------------------------------------------
# Probing this machine


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout


def _windows_features() -> tuple[str, ...]:
    import ctypes

    present = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined]
    return _ordered({name for pid, name in _WINDOWS_FEATURES.items() if present(pid)})


def probe_cpu(notes: list[str]) -> tuple[CpuInfo, dict[str, str]]:
    """The CPU, and the macOS sysctl values when on a Mac (for the Apple Silicon part)."""
    arch = platform.machine()
    model = platform.processor() or arch
    features: tuple[str, ...] = ()
    sysctl: dict[str, str] = {}
    try:
        if sys.platform.startswith("linux"):
            model, features = parse_linux_cpuinfo(Path("/proc/cpuinfo").read_text())
        elif sys.platform == "darwin":
            sysctl = parse_macos_sysctl(_run(["sysctl", "-a"]))
            model = sysctl.get("machdep.cpu.brand_string", model)
            features = macos_features(sysctl)
        elif sys.platform == "win32":
            features = _windows_features()
    except Exception as exc:
        notes.append(f"CPU features could not be read: {exc}")
    return CpuInfo(
        model=model or arch,
        arch=arch,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        features=features,
    ), sysctl


def probe_nvml(notes: list[str]) -> tuple[NvmlGpu, ...]:
    """NVIDIA GPUs via NVML; nothing (and no note) when there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        return read_nvml(pynvml)
    except pynvml.NVMLError_LibraryNotFound:
        return ()
    except Exception as exc:
        notes.append(f"NVIDIA driver (NVML) could not be queried: {exc}")
        return ()


def probe(llama: LlamaBuild | None = None, llama_error: str | None = None) -> HardwareProfile:
    """Probe this machine. ``llama`` is llama.cpp's view, read by the engine layer."""
    notes: list[str] = []
    cpu, sysctl = probe_cpu(notes)
    mem = psutil.virtual_memory()
    apple = apple_silicon_from_sysctl(sysctl) if sysctl else None
    pci: tuple[PciGpu, ...] = ()
    if sys.platform.startswith("linux"):
        try:
            pci = pci_gpus_from_sysfs(Path("/sys/class/drm"))
        except OSError as exc:
            notes.append(f"PCI display devices could not be listed: {exc}")
    if llama_error:
        notes.append(f"llama.cpp devices could not be listed: {llama_error}")
    return HardwareProfile(
        os=platform.system(),
        os_version=platform.release(),
        cpu=cpu,
        ram_total=int(mem.total),
        ram_available=int(mem.available),
        apple=apple,
        nvml=probe_nvml(notes),
        pci_gpus=pci,
        llama=llama,
        notes=tuple(notes),
    )
