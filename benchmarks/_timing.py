"""Small timing and machine-description helpers shared by the benchmark scripts.

Everything here is importable without fastattn, torch or onnxruntime: optional
libraries are imported lazily and reported as missing rather than failing.

Timing model
------------
``measure(fn)`` calls ``fn`` ``warmup`` times untimed, then times single calls
with ``time.perf_counter`` until it has at least ``min_repeat`` samples and
either ``repeat`` samples or the ``budget`` (seconds of timed calls) is spent.
The median is the number to report; min, max and all samples are kept so the
JSON can be re-analysed. One call per sample (no inner loop): the cells we time
run from ~50 us to seconds, and perf_counter resolution is far below that.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

# The repository root, appended (lowest priority) to sys.path so that an
# in-place build (`python setup.py build_ext --inplace`) of fastattn is found
# when the package is not installed; an installed fastattn still wins.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

__all__ = [
    "Timing",
    "measure",
    "default_threads",
    "set_env_threads",
    "limit_threads",
    "machine_info",
    "optional_import",
    "fastattn_info",
    "load_average",
    "busy_warning",
    "write_json",
]


@dataclasses.dataclass
class Timing:
    """Result of :func:`measure`. Times in seconds."""

    times: list
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def n(self) -> int:
        return len(self.times)

    def as_dict(self) -> dict:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "n": self.n,
            "warmup": self.warmup,
            "times_s": list(self.times),
        }


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeat: int = 10,
    min_repeat: int = 3,
    budget: Optional[float] = None,
    collect: bool = False,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then between ``min_repeat`` and
    ``repeat`` timed calls, stopping early once ``budget`` seconds of timed
    calls have been spent (``budget=None``: always ``repeat`` calls).

    ``collect=True`` runs a garbage collection before every timed call (outside
    the timed region) and keeps the collector off inside it, like ``timeit``.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    min_repeat = max(1, min(min_repeat, repeat))
    for _ in range(warmup):
        fn()
    times = []
    spent = 0.0
    gc_was_enabled = gc.isenabled()
    try:
        while len(times) < repeat:
            if collect:
                gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if gc_was_enabled:
                gc.enable()
            times.append(dt)
            spent += dt
            if budget is not None and len(times) >= min_repeat and spent >= budget:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(times=times, warmup=warmup)


# ----------------------------------------------------------------------------
# threads


def default_threads() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def set_env_threads(n: int) -> None:
    """Set the usual thread-count environment variables to ``n``.

    Only affects libraries that read them at load time, so call it before
    importing torch / onnxruntime / fastattn (NumPy's OpenBLAS is limited at
    run time by :func:`limit_threads` instead). Child processes inherit it.
    """
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(n)


_LIMITERS: list = []


def limit_threads(n: int) -> dict:
    """Limit every thread pool we know of to ``n`` threads, for the rest of the
    process. Returns a description of what was set (for the JSON).

    - BLAS and OpenMP libraries already loaded: threadpoolctl (import the
      libraries first: threadpoolctl only sees loaded ones).
    - fastattn: ``set_num_threads`` if importable.
    - torch: ``torch.set_num_threads`` if already imported.
    (ONNX Runtime takes ``intra_op_num_threads`` per session.)
    """
    done = {"threads": n}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        _LIMITERS.append(threadpool_limits(limits=n))
        done["threadpoolctl"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads")}
            for d in threadpool_info()
        ]
    except ImportError:
        done["threadpoolctl"] = "not installed: BLAS thread count not limited at run time"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        done["torch"] = torch.get_num_threads()
    return done


# ----------------------------------------------------------------------------
# optional imports and machine description


def optional_import(name: str):
    """Import ``name``; return ``(module, None)`` or ``(None, reason)``."""
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, but also broken builds (OSError ...)
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


_ISA_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2",
    "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
    "avx_vnni", "amx_tile", "neon", "asimd", "sve",
)


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "cpu MHz", "cache size") and key not in info:
            info[key] = val.strip()
    return info


def _meminfo_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def fastattn_info(module: str = "fastattn", timeout: float = 60.0) -> str:
    """Output of ``python -m <module> info``, or why it is unavailable."""
    try:
        # The child must import the same fastattn as this process (installed,
        # or built in place): put that copy's folder first and run it from a
        # neutral folder, where no unbuilt source tree can shadow it.
        env = dict(os.environ)
        try:
            mod = importlib.import_module(module)
            root = (os.path.dirname(list(mod.__path__)[0]) if hasattr(mod, "__path__")
                    else os.path.dirname(mod.__file__))
        except Exception:
            root = REPO_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        res = subprocess.run(
            [sys.executable, "-m", module, "info"],
            capture_output=True, text=True, timeout=timeout, env=env,
            cwd=tempfile.gettempdir(),
        )
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})"
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"unavailable (exit {res.returncode}: {tail[0]})"
    return res.stdout.strip()


def machine_info(fastattn_module: str = "fastattn", with_fastattn_info: bool = True) -> dict:
    """CPU model, cores, ISA flags, memory, OS, library versions, BLAS pools,
    and ``python -m fastattn info``. Only reads; imports optional libraries
    that are installed (importing them is needed to read their versions)."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    info = {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_threads(),
        "isa": [f for f in _ISA_FLAGS if f in flags],
        "memory_gib": _meminfo_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": {},
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in _THREAD_ENV_VARS + ("FASTATTN_ISA", "OMP_WAIT_POLICY") if k in os.environ},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    for name in ("numpy", "scipy", "torch", "onnxruntime", "onnx", "threadpoolctl", "matplotlib", fastattn_module):
        mod = sys.modules.get(name)
        if mod is None:
            mod, _ = optional_import(name)
        info["libraries"][name] = getattr(mod, "__version__", "?") if mod is not None else None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture")}
            for d in threadpool_info()
        ]
    except ImportError:
        pass
    if with_fastattn_info:
        info["fastattn_info"] = fastattn_info(fastattn_module)
    return info


def describe_machine(info: dict) -> str:
    """A few Markdown lines describing :func:`machine_info`'s result."""
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v is not None)
    missing = ", ".join(k for k, v in info["libraries"].items() if v is None)
    lines = [
        f"- CPU: {info['cpu_model']} ({info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs"
        + (f", {info['physical_cores']} physical cores" if info.get("physical_cores") else "")
        + f"), ISA: {' '.join(info['isa']) or '?'}, memory {info['memory_gib']} GiB",
        f"- Python {info['python']} on {info['os']}",
        f"- Libraries: {libs}" + (f" (missing: {missing})" if missing else ""),
    ]
    for pool in info.get("threadpools", []):
        lines.append(
            f"- Thread pool: {pool.get('user_api')}/{pool.get('internal_api')} {pool.get('version')}"
            f" ({pool.get('prefix')}, {pool.get('num_threads')} threads)"
        )
    if info.get("load_average"):
        la = info["load_average"]
        lines.append(f"- Load average at start: {la[0]} {la[1]} {la[2]}")
    fa = info.get("fastattn_info")
    if fa:
        if "\n" in fa:
            lines.append("- `python -m fastattn info`:")
            lines.extend("    " + ln for ln in fa.splitlines())
        else:
            lines.append(f"- `python -m fastattn info`: {fa}")
    return "\n".join(lines)


def load_average():
    """1, 5 and 15 minute load averages, or None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_warning(threshold: float = 0.5):
    """A warning string when other processes keep the CPUs busy (1-minute
    load average above ``threshold`` before the benchmark starts), else None.
    On a 2-core machine one other busy process halves a 2-thread result and
    can make spin-waiting thread pools (OpenBLAS, OpenMP) far slower still."""
    la = load_average()
    if la is None or la[0] <= threshold:
        return None
    return (f"machine busy: load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} before the run "
            f"(want < {threshold:g}): numbers are not representative")


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as indented JSON, creating parent folders."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
        fh.write("\n")
