"""Pick the best compiled kernel build the CPU supports, once, at import.

The kernels are compiled once per instruction set (``_kernels_baseline``,
``_kernels_avx2``, ``_kernels_avx512``).  The choice is made from the CPU
features NumPy detected at start-up (it checks both the CPU and the OS's
register-state support), falling back to ``/proc/cpuinfo``.  The environment
variable ``FASTATTN_ISA=baseline|avx2|avx512`` forces a build; asking for one
the CPU cannot run, or that was not built, raises ``ImportError`` with the
reason instead of crashing later with an illegal instruction.
"""
import importlib
import os

ORDER = ("avx512", "avx2", "baseline")
_REQUIRED = {
    "avx512": ("AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL", "AVX2", "FMA3"),
    "avx2": ("AVX2", "FMA3"),
    "baseline": (),
}


def cpu_features():
    """Set of CPU feature names (NumPy's spelling: AVX2, FMA3, AVX512F, ...)."""
    feats = set()
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:  # pragma: no cover - older NumPy
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as f
        except ImportError:
            f = {}
    feats.update(k for k, v in f.items() if v)
    if not feats and os.path.exists("/proc/cpuinfo"):  # pragma: no cover
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    words = set(line.split(":", 1)[1].split())
                    for w in ("avx2", "avx512f", "avx512dq", "avx512bw",
                              "avx512vl"):
                        if w in words:
                            feats.add(w.upper())
                    if "fma" in words:
                        feats.add("FMA3")
                    break
    return feats


def supported(isa, feats=None):
    """Whether this CPU can run the ``isa`` build."""
    feats = cpu_features() if feats is None else feats
    return all(f in feats for f in _REQUIRED[isa])


def _load(isa):
    return importlib.import_module(f"fastattn._kernels_{isa}")


def _select():
    feats = cpu_features()
    forced = os.environ.get("FASTATTN_ISA", "").strip().lower()
    if forced:
        if forced not in _REQUIRED:
            raise ImportError(f"FASTATTN_ISA={forced!r} is not one of "
                              f"{', '.join(ORDER)}")
        if not supported(forced, feats):
            missing = [f for f in _REQUIRED[forced] if f not in feats]
            raise ImportError(f"FASTATTN_ISA={forced!r} but this CPU lacks "
                              f"{', '.join(missing)}")
        try:
            return forced, _load(forced)
        except ImportError as e:
            raise ImportError(f"FASTATTN_ISA={forced!r}: that kernel build is "
                              f"not installed ({e})") from e
    errors = []
    for isa in ORDER:
        if not supported(isa, feats):
            continue
        try:
            return isa, _load(isa)
        except ImportError as e:  # build not made on this platform
            errors.append(f"{isa}: {e}")
    raise ImportError("no fastattn kernel build could be imported: "
                      + "; ".join(errors))


def _self_check(mod, ref):
    """Run a small fused attention (both tile layouts, both dtypes, causal)
    through ``mod`` and ``ref`` and compare.  Guards the AVX-512 build, whose
    intrinsic wrappers cannot be exercised on the CI machine (no AVX-512):
    a wrong result there must not reach users silently."""
    import numpy as np
    rng = np.random.default_rng(1234)
    for dt, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        for L, path in ((70, mod.PATH_LANES), (3, mod.PATH_ROWS)):
            S, D, Dv = 1100, 40, 24
            q = rng.standard_normal((L, D)).astype(dt)
            k = rng.standard_normal((S, D)).astype(dt)
            v = rng.standard_normal((S, Dv)).astype(dt)
            z = np.zeros(1, np.int64)
            outs = []
            for m in (mod, ref):
                o = np.zeros((L, Dv), dt)
                m.flash(m.FlashCall(q=q, qoff=z, qs=D, k=k, koff=z, ks=D,
                                    v=v, voff=z, vs=Dv, out=o, ooff=z, os=Dv,
                                    L=L, S=S, D=D, Dv=Dv, nb=1, Hq=1, Hkv=1,
                                    scale=D ** -0.5, right=0, off=S - L,
                                    nthreads=1, path=path))
                outs.append(o)
            if not np.allclose(outs[0], outs[1], rtol=0, atol=tol):
                return False
    return True


isa, kernels = _select()
if isa == "avx512" and not os.environ.get("FASTATTN_ISA"):
    try:
        _fallback = _load("avx2")
    except ImportError:  # pragma: no cover - avx2 build missing
        _fallback = None
    if _fallback is not None and not _self_check(kernels, _fallback):  # pragma: no cover
        import warnings
        warnings.warn("fastattn: the avx512 kernel build failed its start-up "
                      "self-check against the avx2 build; using avx2. Please "
                      "report this with `python -m fastattn info`.",
                      RuntimeWarning, stacklevel=2)
        isa, kernels = "avx2", _fallback


def available_builds():
    """Kernel builds installed and runnable on this CPU."""
    out = []
    for name in ORDER:
        if supported(name):
            try:
                _load(name)
            except ImportError:
                continue
            out.append(name)
    return out


def load_build(name):
    """Import a specific kernel build (tests use this to compare builds)."""
    if name not in _REQUIRED:
        raise ValueError(f"unknown kernel build {name!r}; choose from {ORDER}")
    if not supported(name):
        raise RuntimeError(f"this CPU cannot run the {name!r} build")
    return _load(name)
