"""What this host is, and what an engine should be given on it: the dtype that is fast
here, the preloaded libraries, the cores. Pure reads of the machine, no vLLM imports.
"""

from __future__ import annotations

import ctypes.util
import fcntl
import os
import platform
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# CPU flags of native bfloat16 arithmetic (x86's AVX512-BF16 and AMX, Arm's BF16).
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`), empty where unknown."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_dtype(requested: str, on_cpu: bool = True, flags: set[str] | None = None) -> str:
    """The dtype an engine is given: an explicit one as asked; `auto` on a CPU bfloat16
    where the CPU computes it natively and float32 where it does not; `auto` elsewhere
    (vLLM then serves the model's own dtype)."""
    if requested != "auto" or not on_cpu:
        return requested
    return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), in order."""
    return sorted(os.sched_getaffinity(0))


def cpu_list_text(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the syntax of VLLM_CPU_OMP_THREADS_BIND and taskset)."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def iomp_library() -> str | None:
    """Intel's OpenMP runtime from the `intel-openmp` wheel in this environment."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return str(path) if path.is_file() else None


def tcmalloc_library() -> str | None:
    """The system's tcmalloc (Debian: libtcmalloc-minimal4)."""
    name = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if name is None:
        return None
    for folder in (
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ):
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return name


PRELOADS = {"iomp": iomp_library, "tcmalloc": tcmalloc_library}


def preload_env(choice: str) -> dict[str, str]:
    """LD_PRELOAD for a '+'-joined choice of PRELOADS ('default': none of ours, vLLM's own)."""
    if choice == "default":
        return {}
    libraries = []
    for name in choice.split("+"):
        library = PRELOADS[name]()
        if library is None:
            raise RuntimeError(f"{name} is not installed on this host")
        libraries.append(library)
    return {"LD_PRELOAD": ":".join(libraries)}


# --- Cores: each engine binds its workers to cores no other engine on this host has. ---
#
# vLLM binds an engine's CPU workers to the cores in VLLM_CPU_OMP_THREADS_BIND ('auto':
# the last cores of the NUMA node, the same ones for every engine on the host, so two
# engines left to it share a core and starve each other). We claim cores host-wide with
# one lock file per core (flock: the kernel drops a claim when its process ends, however
# it ends), and hand the engine exactly the cores this process claimed.

CLAIMS_DIR_ENV = "ENTROPY_SERVE_CORE_CLAIMS"
DEFAULT_CLAIMS_DIR = "/tmp/entropy-serve-cores"
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vLLM's CPU KV-cache budget in GiB; it overrides the engine's


class CoresUnavailable(RuntimeError):
    """No core is free for an engine; the message names who holds them and what to do."""


def claims_dir() -> Path:
    folder = Path(os.environ.get(CLAIMS_DIR_ENV) or DEFAULT_CLAIMS_DIR)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o1777)  # shared by every user's engines, like /tmp
    return folder


def parse_cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]; a ValueError naming the text otherwise."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ValueError(f"expected a CPU list such as '0-3' or '0,2', got {text!r}") from None
    if not cpus:
        raise ValueError(f"expected a CPU list such as '0-3' or '0,2', got {text!r}")
    return sorted(set(cpus))


VLLM_BINDINGS = ("auto", "nobind")  # vLLM's own values of VLLM_CPU_OMP_THREADS_BIND


def parse_bind(text: str) -> list[list[int]] | None:
    """VLLM_CPU_OMP_THREADS_BIND's syntax (`bind_text`'s inverse): '0-1|2-3' -> [[0, 1], [2, 3]],
    one CPU list per rank; None for vLLM's own 'auto' and 'nobind'; a ValueError naming
    the text otherwise."""
    if text in VLLM_BINDINGS:
        return None
    return [parse_cpu_list(group) for group in text.split("|")]


class CoreClaims:
    """The cores this process holds, by lock file; `claim` takes free ones without waiting."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._locks: dict[int, int] = {}  # cpu -> open file descriptor holding its flock

    @property
    def cpus(self) -> list[int]:
        return sorted(self._locks)

    def _path(self, cpu: int) -> Path:
        self.folder = self.folder or claims_dir()
        return self.folder / f"cpu{cpu}.lock"

    def try_claim(self, cpu: int) -> bool:
        if cpu in self._locks:
            return True
        fd = os.open(self._path(cpu), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._locks[cpu] = fd
        return True

    def holder(self, cpu: int) -> str:
        """The pid written by the process that holds `cpu`, or '?'."""
        try:
            return self._path(cpu).read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        for fd in self._locks.values():
            os.close(fd)  # closing the descriptor drops its flock
        self._locks.clear()


def split_cpus(cpus: list[int], num_ranks: int) -> list[list[int]]:
    """`cpus` in `num_ranks` contiguous groups, as even as they go (earlier ones larger)."""
    size, extra = divmod(len(cpus), num_ranks)
    groups, start = [], 0
    for rank in range(num_ranks):
        end = start + size + (1 if rank < extra else 0)
        groups.append(cpus[start:end])
        start = end
    return groups


def bind_text(groups: list[list[int]]) -> str:
    """VLLM_CPU_OMP_THREADS_BIND's syntax: one CPU list per rank, '|' between ranks."""
    return "|".join(cpu_list_text(group) for group in groups)


def claim_engine_cores(claims: CoreClaims, num_ranks: int, requested: str | None = None) -> str:
    """Claim this process's engine cores and return their VLLM_CPU_OMP_THREADS_BIND value.

    `requested` (a CPU list, or vLLM's per-rank 'a|b' syntax) is taken as given, with the
    cores claimed where free, so engines that are told their cores still keep others off
    them; vLLM's own 'auto' and 'nobind' pass through unclaimed. Otherwise every usable
    core that no other engine holds is claimed (cores this process already holds are
    kept: its engines run one after another) and split evenly over the engine's
    `num_ranks` worker ranks."""
    if requested:
        for group in parse_bind(requested) or []:
            for cpu in group:
                claims.try_claim(cpu)
        return requested
    if not claims.cpus:
        for cpu in usable_cpus():
            claims.try_claim(cpu)
    if len(claims.cpus) < num_ranks:
        held = {cpu: claims.holder(cpu) for cpu in usable_cpus() if cpu not in claims.cpus}
        raise CoresUnavailable(
            f"an engine of {num_ranks} worker rank(s) needs as many free cores; this process holds "
            f"{claims.cpus or 'none'}, and other engines on this host hold "
            + ", ".join(f"core {cpu} (pid {pid})" for cpu, pid in held.items())
            + ". Give each engine its own cores with --cpu-cores (e.g. --cpu-cores 0-1), or stop one."
        )
    return bind_text(split_cpus(claims.cpus, num_ranks))


def launcher_rank_cores(environ: dict[str, str]) -> str | None:
    """Under a multi-rank launch on this node (torchrun, accelerate: LOCAL_RANK of
    LOCAL_WORLD_SIZE), the rank's own share of the usable cores, so the engines the ranks
    start side by side never claim each other's; None otherwise."""
    num_ranks = int(environ.get("LOCAL_WORLD_SIZE") or 1)
    if num_ranks < 2 or "LOCAL_RANK" not in environ:
        return None
    cpus = usable_cpus()
    if len(cpus) < num_ranks:
        raise CoresUnavailable(f"{num_ranks} ranks on this node need as many cores, and it has {len(cpus)}")
    return cpu_list_text(split_cpus(cpus, num_ranks)[int(environ["LOCAL_RANK"])])
