"""Hardware probe: canned outputs for machines this one is not, the real thing for this one."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from app.core import capacity, memory
from app.core.hardware import (
    GIB,
    AppleSilicon,
    BackendDevice,
    CpuInfo,
    HardwareProfile,
    LlamaBuild,
    NvmlGpu,
    PciGpu,
    advice,
    apple_silicon_from_sysctl,
    macos_features,
    parse_linux_cpuinfo,
    parse_macos_sysctl,
    pci_gpus_from_sysfs,
    read_nvml,
)
from app.engine.probe import full_profile, llama_build

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme pni ssse3 fma avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme pni ssse3 fma avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni amx_int8
"""
OLD_X86_CPUINFO = """model name\t: Intel(R) Core(TM) i5-2400 CPU @ 3.10GHz
flags\t\t: fpu pni ssse3 sse4_1 sse4_2 avx
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm sve
CPU implementer\t: 0x41
"""
M2_SYSCTL = """machdep.cpu.brand_string: Apple M2 Pro
hw.memsize: 34359738368
hw.optional.arm64: 1
hw.optional.neon: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_FP16: 1
iogpu.wired_limit_mb: 0
"""
INTEL_MAC_SYSCTL = """machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz
hw.memsize: 17179869184
machdep.cpu.features: FPU VME SSE3 SSSE3 FMA AVX1.0 F16C
machdep.cpu.leaf7_features: AVX2 BMI1 BMI2
"""


def test_x86_cpuinfo_features() -> None:
    model, features = parse_linux_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert features == ("SSE3", "SSSE3", "AVX", "AVX2", "FMA", "F16C", "AVX512F", "AVX512BW",
                        "AVX512VL", "AVX512_VNNI", "AMX_INT8")


def test_old_x86_has_avx_but_not_avx2() -> None:
    _, features = parse_linux_cpuinfo(OLD_X86_CPUINFO)
    assert "AVX" in features and "AVX2" not in features and "FMA" not in features


def test_arm_cpuinfo_features() -> None:
    _, features = parse_linux_cpuinfo(ARM_CPUINFO)
    assert features == ("NEON", "DOTPROD", "I8MM", "SVE", "FP16")


def test_apple_silicon_from_sysctl() -> None:
    sysctl = parse_macos_sysctl(M2_SYSCTL)
    assert macos_features(sysctl) == ("NEON", "DOTPROD", "I8MM", "FP16")
    apple = apple_silicon_from_sysctl(sysctl)
    assert apple == AppleSilicon("Apple M2 Pro", 32 * GIB, 32 * GIB * 2 // 3)


def test_apple_wired_limit_raises_gpu_share() -> None:
    sysctl = parse_macos_sysctl(M2_SYSCTL.replace("wired_limit_mb: 0", "wired_limit_mb: 28672"))
    apple = apple_silicon_from_sysctl(sysctl)
    assert apple is not None and apple.gpu_usable_memory == 28 * GIB


def test_intel_mac_is_not_apple_silicon() -> None:
    sysctl = parse_macos_sysctl(INTEL_MAC_SYSCTL)
    assert apple_silicon_from_sysctl(sysctl) is None
    assert macos_features(sysctl) == ("SSE3", "SSSE3", "AVX", "AVX2", "FMA", "F16C")


@dataclass
class _Mem:
    total: int
    free: int


class FakeNvml:
    """Canned answers in the shape pynvml gives them (this machine has no NVIDIA GPU)."""

    def __init__(self, gpus: list[tuple[str, int, int, tuple[int, int]]]) -> None:
        self.gpus = gpus
        self.shut_down = False

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None:
        self.shut_down = True
    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)
    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index
    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle][0]
    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        return _Mem(self.gpus[handle][1], self.gpus[handle][2])
    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.gpus[handle][3]


def test_nvml_reading() -> None:
    fake = FakeNvml([("NVIDIA GeForce RTX 4090", 24 * GIB, 22 * GIB, (8, 9)),
                     ("NVIDIA RTX A2000", 6 * GIB, 5 * GIB, (8, 6))])
    gpus = read_nvml(fake)
    assert gpus[0] == NvmlGpu("NVIDIA GeForce RTX 4090", 24 * GIB, 22 * GIB, "550.54.15", "8.9")
    assert gpus[1].compute_capability == "8.6"
    assert fake.shut_down


def test_pci_gpus_from_sysfs(tmp_path: Path) -> None:
    for card, vendor in (("card0", "0x10de"), ("card1", "0x1002")):
        dev = tmp_path / card / "device"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text("0x2684\n")
    (tmp_path / "card0-HDMI-A-1").mkdir()  # connector entries are not cards
    assert pci_gpus_from_sysfs(tmp_path) == (PciGpu("NVIDIA", "0x2684"), PciGpu("AMD", "0x2684"))


def _profile(**changes: object) -> HardwareProfile:
    base = HardwareProfile(
        os="Linux", os_version="6.8", cpu=CpuInfo("x", "x86_64", 8, 16, ("AVX2",)),
        ram_total=32 * GIB, ram_available=28 * GIB,
        llama=LlamaBuild("0.3", ("CPU",), (BackendDevice("CPU", "x", "cpu", "CPU", None, None),),
                         "", False),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _cuda_build(free: int) -> LlamaBuild:
    return LlamaBuild("0.3", ("CUDA", "CPU"), (
        BackendDevice("CUDA0", "NVIDIA GeForce RTX 4090", "gpu", "CUDA", free, 24 * GIB),
        BackendDevice("CPU", "x", "cpu", "CPU", None, None)), "", True)


def test_advice_nvidia_without_cuda_build() -> None:
    nv = (NvmlGpu("NVIDIA GeForce RTX 4090", 24 * GIB, 22 * GIB, "550", "8.9"),)
    tips = advice(_profile(nvml=nv))
    assert len(tips) == 1
    assert "RTX 4090 is present but this llama.cpp build has no CUDA backend" in tips[0]
    assert "CUDA installer" in tips[0]
    assert 'make run CMAKE_ARGS="-DGGML_CUDA=on"' in tips[0]
    # pip rebuilds the installed version (not the newest) with the RPC backend QuantDesk uses
    assert ('CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=ON" pip install --force-reinstall '
            "--no-cache-dir llama-cpp-python==0.3 (needs the CUDA toolkit)") in tips[0]
    assert advice(_profile(nvml=nv, llama=_cuda_build(22 * GIB))) == ()


def test_advice_for_an_amx_build_rebuilds_the_same_version_with_rpc() -> None:
    amx = replace(_profile().llama, system_info="CPU : AVX2 = 1 | AMX_INT8 = 1 |")
    tips = advice(_profile(llama=amx))
    assert len(tips) == 1 and "AMX kernels" in tips[0]
    assert ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_RPC=ON" pip '
            "install --force-reinstall --no-cache-dir llama-cpp-python==0.3.") in tips[0]


def test_advice_nvidia_seen_on_pci_only() -> None:
    tips = advice(_profile(pci_gpus=(PciGpu("NVIDIA", "0x2684"),)))
    assert tips and "no CUDA backend" in tips[0]


def test_advice_apple_without_metal_and_amd_without_vulkan() -> None:
    apple = AppleSilicon("Apple M1", 16 * GIB, 10 * GIB)
    assert "Metal" in advice(_profile(apple=apple))[0]
    assert "Vulkan" in advice(_profile(pci_gpus=(PciGpu("AMD", "0x73bf"),)))[0]


def test_capacity_prefers_a_large_gpu() -> None:
    cap = capacity.largest_model(_profile(llama=_cuda_build(22 * GIB)))
    assert cap.where == "GPU"
    # 22 GiB less 0.5 GiB, over 4.9 bits per weight plus a fifth: about 31 B
    assert 28e9 < cap.n_params < 34e9
    assert "fully on the GPU" in cap.sentence()


def test_capacity_without_gpu_uses_ram_less_a_reserve() -> None:
    cap = capacity.largest_model(_profile(ram_available=16 * GIB))
    assert cap.where == "RAM"
    assert cap.budget_bytes == 16 * GIB - memory.RAM_RESERVE
    assert "up to about 20 B parameters at Q4_K_M fully in memory" in cap.sentence()


def test_capacity_small_gpu_beside_large_ram_reports_ram() -> None:
    cap = capacity.largest_model(_profile(ram_available=120 * GIB, llama=_cuda_build(2 * GIB)))
    assert cap.where == "RAM"


# --- this machine, for real -----------------------------------------------------------------


def test_real_llama_build_lists_the_cpu() -> None:
    build, error = llama_build()
    assert error is None and build is not None
    assert "CPU" in build.backends
    cpu = [d for d in build.devices if d.kind == "cpu"]
    assert cpu and cpu[0].memory_total is not None
    # ggml's CPU device reports system memory
    assert cpu[0].memory_total == pytest.approx(psutil.virtual_memory().total, rel=0.05)
    assert "CPU" in build.system_info


def test_real_profile_of_this_machine() -> None:
    profile = full_profile()
    assert profile.notes == ()
    assert profile.cpu.logical_cores == psutil.cpu_count()
    assert 0 < profile.ram_available <= profile.ram_total
    assert profile.ram_total == psutil.virtual_memory().total
    assert profile.llama is not None
    # llama.cpp here is built for this CPU: every SIMD level it uses, the probe must find.
    used = set(re.findall(r"(\w+) = 1", profile.llama.system_info))
    for feature in ("AVX", "AVX2", "FMA", "F16C", "AVX512F", "NEON"):
        if feature in used:
            assert feature in profile.cpu.features, feature
    data = profile.to_json()
    assert data["cpu"]["model"] == profile.cpu.model and "advice" in data
