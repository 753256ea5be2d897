"""fastattn._dispatch: choosing the kernel build at import time."""
import os
import re
import subprocess
import sys

import pytest

import fastattn
from fastattn import _dispatch


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter that imports the same fastattn."""
    e = dict(os.environ)
    e.pop("FASTATTN_ISA", None)
    e["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastattn.__file__))]
        + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, check=False,
                          text=True, timeout=120)


def test_selected_build_is_the_best_available():
    avail = _dispatch.available_builds()
    assert "baseline" in avail
    assert list(avail) == [b for b in _dispatch.ORDER if b in avail]
    if not os.environ.get("FASTATTN_ISA"):
        assert fastattn.isa == avail[0]
    assert fastattn.kernels.ISA == fastattn.isa
    assert fastattn.kernels is _dispatch.load_build(fastattn.isa)


def test_cpu_features_and_supported():
    feats = _dispatch.cpu_features()
    assert isinstance(feats, set)
    assert _dispatch.supported("baseline", set())
    assert not _dispatch.supported("avx2", {"AVX2"})           # FMA3 missing
    assert _dispatch.supported("avx2", {"AVX2", "FMA3"})
    assert not _dispatch.supported("avx512", {"AVX512F", "AVX2", "FMA3"})
    assert _dispatch.supported("avx512", set(_dispatch._REQUIRED["avx512"]))
    for isa in _dispatch.available_builds():
        assert _dispatch.supported(isa, feats)


def test_load_build_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="bogus"):
        _dispatch.load_build("bogus")
    unsupported = [b for b in _dispatch.ORDER if not _dispatch.supported(b)]
    if not unsupported:
        pytest.skip("this CPU supports every build")
    with pytest.raises(RuntimeError, match=unsupported[0]):
        _dispatch.load_build(unsupported[0])


def test_select_falls_back_when_a_build_is_missing(monkeypatch):
    """A build the CPU supports but that was not compiled is skipped."""
    real = _dispatch._load

    def fake_load(isa):
        if isa != "baseline":
            raise ImportError(f"no module fastattn._kernels_{isa}")
        return real(isa)

    monkeypatch.setattr(_dispatch, "_load", fake_load)
    monkeypatch.setattr(_dispatch, "cpu_features",
                        lambda: set(_dispatch._REQUIRED["avx512"]))
    monkeypatch.delenv("FASTATTN_ISA", raising=False)
    isa, mod = _dispatch._select()
    assert isa == "baseline" and mod.ISA == "baseline"
    monkeypatch.setenv("FASTATTN_ISA", "avx2")
    with pytest.raises(ImportError, match="not installed"):
        _dispatch._select()

    def no_builds(isa):
        raise ImportError("nothing here")

    monkeypatch.setattr(_dispatch, "_load", no_builds)
    monkeypatch.delenv("FASTATTN_ISA")
    with pytest.raises(ImportError, match="no fastattn kernel build"):
        _dispatch._select()


@pytest.mark.parametrize("value,match", [
    ("bogus", r"FASTATTN_ISA='bogus' is not one of"),
    ("sse9", r"FASTATTN_ISA='sse9'"),
])
def test_bad_isa_env_makes_import_fail(value, match):
    r = run_python("import fastattn", FASTATTN_ISA=value)
    assert r.returncode != 0
    assert "ImportError" in r.stderr
    assert re.search(match, r.stderr), r.stderr
    assert "Segmentation" not in r.stderr and "Illegal" not in r.stderr


def test_unsupported_isa_env_makes_import_fail():
    unsupported = [b for b in _dispatch.ORDER if not _dispatch.supported(b)]
    if not unsupported:
        pytest.skip("this CPU supports every build")
    isa = unsupported[0]
    r = run_python("import fastattn", FASTATTN_ISA=isa)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "lacks" in r.stderr, r.stderr
    missing = [f for f in _dispatch._REQUIRED[isa] if f not in _dispatch.cpu_features()]
    assert missing[0] in r.stderr


@pytest.mark.parametrize("isa", _dispatch.available_builds())
def test_forced_isa_is_used(isa):
    code = ("import fastattn, numpy as np; "
            "q = np.ones((3, 4), np.float32); "
            "print(fastattn.isa, fastattn.kernels.ISA, "
            "float(fastattn.scaled_dot_product_attention(q, q, q).sum()))")
    r = run_python(code, FASTATTN_ISA=f" {isa.upper()} ")   # case/space tolerant
    assert r.returncode == 0, r.stderr
    got_isa, got_kernel_isa, total = r.stdout.split()
    assert got_isa == isa and got_kernel_isa == isa
    assert float(total) == 12.0


def test_start_up_self_check_compares_builds():
    """The import-time guard used for the avx512 build: it accepts every
    build that runs here, and rejects a build that computes garbage."""
    from fastattn import _dispatch
    builds = [_dispatch.load_build(n) for n in _dispatch.available_builds()]
    for b in builds:
        assert _dispatch._self_check(b, builds[-1])

    class Broken:
        """A build whose fused kernel writes a wrong output."""
        def __getattr__(self, name):
            return getattr(builds[-1], name)

        def flash(self, call):
            call.out[...] = 1.0

    assert not _dispatch._self_check(Broken(), builds[-1])
