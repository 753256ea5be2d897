"""Pick the best compiled kernel build the CPU supports, once, at import.

The kernels are compiled once per instruction set (``_kernels_baseline``,
``_kernels_avx2``, ``_kernels_avx512``, ``_kernels_avx512bf16``,
``_kernels_amx``).  The choice is made from the CPU features NumPy detected at
start-up (it checks both the CPU and the OS's register-state support), falling
back to ``/proc/cpuinfo``.  AMX is not in NumPy's list: its detection (cpuid
leaf 7, XCR0) and the Linux permission request for the tile state
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)``, once per process, before any
tile instruction) are done in C by the baseline build (``amx_request``); when
they succeed the pseudo-features ``AMX_TILE`` and ``AMX_BF16`` join the set,
otherwise :data:`amx_status` holds the reason.  The environment variable
``FASTATTN_ISA=baseline|avx2|avx512|avx512bf16|amx`` forces a build; asking for
one the CPU cannot run, or that was not built, raises ``ImportError`` with the
reason instead of crashing later with an illegal instruction.
"""
import importlib
import os

ORDER = ("amx", "avx512bf16", "avx512", "avx2", "baseline")
_AVX512 = ("AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL", "AVX2", "FMA3")
_REQUIRED = {
    "amx": _AVX512 + ("AVX512BF16", "AMX_TILE", "AMX_BF16"),
    "avx512bf16": _AVX512 + ("AVX512BF16",),
    "avx512": _AVX512,
    "avx2": ("AVX2", "FMA3"),
    "baseline": (),
}


# (usable, reason) of AMX in this process; None until first asked
amx_status = None


def _amx_probe():
    """Ask the baseline build's C code, once per process, whether AMX-BF16 is
    present and the OS granted this process the tile state."""
    global amx_status
    if amx_status is None:
        try:
            base = importlib.import_module("fastattn._kernels_baseline")
            ok, reason = base.amx_request()
        except (ImportError, AttributeError) as e:   # pragma: no cover
            ok, reason = False, f"the baseline build cannot check AMX ({e})"
        amx_status = (bool(ok), str(reason))
    return amx_status


def cpu_features():
    """Set of CPU feature names (NumPy's spelling: AVX2, FMA3, AVX512F, ...,
    plus AMX_TILE and AMX_BF16 when this process may use AMX)."""
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
                    if "avx512_bf16" in words:
                        feats.add("AVX512BF16")
                    break
    if "AVX512BF16" in feats and _amx_probe()[0]:
        feats.update(("AMX_TILE", "AMX_BF16"))
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
            why = ""
            if any(f.startswith("AMX") for f in missing) and amx_status is not None:
                why = f" ({amx_status[1]})"
            raise ImportError(f"FASTATTN_ISA={forced!r} but this CPU lacks "
                              f"{', '.join(missing)}{why}")
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


def _self_check_bf16(mod, ref):
    """The bf16 GEMM (packed weight, odd shapes, bias + GELU, fp32 and bf16
    stores) and the fp32 -> bf16 conversion through ``mod`` and ``ref``.  The
    two builds accumulate in different orders (AMX tiles, vdpbf16ps pairs,
    fp32 FMA chains), so the products are compared within a few fp32 ulps of
    the sum of |terms|; the conversion must agree bit for bit."""
    import numpy as np
    if not hasattr(ref, "bf16_linear"):   # pragma: no cover - a stale build
        return True
    rng = np.random.default_rng(4321)
    xf = rng.standard_normal((37, 70)).astype(np.float32)
    wf = rng.standard_normal((45, 70)).astype(np.float32)
    bias = rng.standard_normal(45).astype(np.float32)
    cvt = []
    for m in (mod, ref):
        o = np.empty(xf.shape, np.uint16)
        m.bf16_from_f32(xf, o, 1)
        cvt.append(o)
    if not np.array_equal(cvt[0], cvt[1]):
        return False
    x = cvt[1]
    w = np.empty(wf.shape, np.uint16)
    ref.bf16_from_f32(wf, w, 1)
    xb = (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    wb = (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    bound = 70 * 2.0 ** -22 * (np.abs(xb) @ np.abs(wb).T) + 1e-30
    outs = []
    for m in (mod, ref):
        p = m.bf16_pack(w)
        y = np.empty((37, 45), np.float32)
        m.bf16_linear(x, p, None, 0, y, 1)
        yb = np.empty((37, 45), np.uint16)
        m.bf16_linear(x[5:], p, bias, m.ACT_GELU, yb[5:], 1)
        outs.append((y, yb[5:]))
    if not np.all(np.abs(outs[0][0].astype(np.float64) - outs[1][0]) <= 2 * bound):
        return False
    # bf16 stores: GELU (slope <= 1.13) of values within 2 * bound, each
    # rounded once to bf16 (half an ulp, 2^-9 relative, each)
    b0, b1 = ((o.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
              for o in (outs[0][1], outs[1][1]))
    tol = 2.3 * bound[5:] + 2.0 ** -8 * np.maximum(np.abs(b0), np.abs(b1))
    return bool(np.all(np.abs(b0 - b1) <= tol))


def _self_check_bf16_attention(mod, ref):
    """bf16 fused attention (both layouts, causal, GQA, ragged sizes; float32
    output) through ``mod`` and ``ref``.  The amx build rounds P to bf16 for
    the PV product and the widening builds do not, so they agree within
    2 * 2^-8 * max|v| (the P rounding bound, twice) plus fp32 noise."""
    import numpy as np
    if not hasattr(ref, "flash_bf16"):   # pragma: no cover - a stale build
        return True
    rng = np.random.default_rng(4242)
    for L, path in ((70, mod.PATH_LANES), (3, mod.PATH_ROWS)):
        Hq, Hkv, S, D, Dv = 4, 2, 150, 40, 24
        xs = [rng.standard_normal(n).astype(np.float32)
              for n in (Hq * L * D, Hkv * S * D, Hkv * S * Dv)]
        q, k, v = ((x.view(np.uint32) >> 16).astype(np.uint16) for x in xs)
        outs = []
        for m in (mod, ref):
            out = np.zeros(Hq * L * Dv, np.float32)
            m.flash_bf16(m.FlashCall(
                q=q, qoff=np.arange(Hq, dtype=np.int64) * L * D, qs=D,
                k=k, koff=np.arange(Hkv, dtype=np.int64) * S * D, ks=D,
                v=v, voff=np.arange(Hkv, dtype=np.int64) * S * Dv, vs=Dv,
                out=out, ooff=np.arange(Hq, dtype=np.int64) * L * Dv, os=Dv,
                L=L, S=S, D=D, Dv=Dv, nb=1, Hq=Hq, Hkv=Hkv, scale=D ** -0.5,
                right=S - L, nthreads=1, path=path))
            outs.append(out)
        vmax = float(np.max(np.abs((v.astype(np.uint32) << 16).view(np.float32))))
        if not np.all(np.abs(outs[0] - outs[1]) <= 2 * 2.0 ** -8 * vmax + 1e-5):
            return False
    return True


# each build checked against the next one down at import (not when forced)
_CHECKED = ("amx", "avx512bf16", "avx512")
fallback_notes = []

isa, kernels = _select()
while isa in _CHECKED and not os.environ.get("FASTATTN_ISA"):
    _down = ORDER[ORDER.index(isa) + 1]
    try:
        _fallback = _load(_down)
    except ImportError:  # pragma: no cover - that build missing
        break
    _ok = (_self_check(kernels, _fallback) and _self_check_bf16(kernels, _fallback)
           and _self_check_bf16_attention(kernels, _fallback))
    if _ok:
        break
    import warnings  # pragma: no cover
    _msg = (f"fastattn: the {isa} kernel build failed its start-up self-check "
            f"against the {_down} build; using {_down}. Please report this "
            f"with `python -m fastattn info`.")
    fallback_notes.append(_msg)
    warnings.warn(_msg, RuntimeWarning, stacklevel=2)
    isa, kernels = _down, _fallback


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
