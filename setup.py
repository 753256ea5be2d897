"""Build script for fastattn.

Nothing is compiled or probed when this file is imported: ``python -m build
--sdist`` (or ``python setup.py sdist``) only collects files.  The work is done
by :class:`BuildExt`, the ``build_ext`` command, when extensions are built
(``pip install .``, ``pip wheel .``, ``pip install -e .``,
``python setup.py build_ext --inplace``):

1. It probes the C compiler for OpenMP by compiling, linking and *running* a
   tiny program (flags per compiler family: ``/openmp`` for MSVC,
   ``-fopenmp`` for GCC/clang).  Without OpenMP the build still succeeds,
   serially, and says so loudly.  ``FASTATTN_USE_OMP=0`` opts out;
   ``FASTATTN_FAIL_NO_OPENMP=1`` turns a missing OpenMP into an error.
2. It compiles the attention kernels (``fastattn/_kernels_<isa>.pyx``, which
   include the ``fastattn/*.pxi`` files) once per instruction set as separate
   extension modules (``_kernels_baseline``, ``_kernels_avx2``,
   ``_kernels_avx512``, ``_kernels_avx512bf16``, ``_kernels_amx`` on x86-64;
   only the baseline elsewhere).
   ``fastattn/_dispatch.py`` picks the best one the CPU supports at import
   time, so a wheel built here never raises SIGILL on another machine.
   ``FASTATTN_ISAS=baseline,avx2`` limits which builds are made.
3. ``FASTATTN_DEBUG_CYTHON=1`` turns on Cython's bounds checking.
4. ``FASTATTN_SANITIZE=1`` (gcc/clang) builds with AddressSanitizer and
   UndefinedBehaviorSanitizer (``-fsanitize=address,undefined``, ``-O1 -g``,
   OpenMP still on) for ``tools/sanitize.sh``; such a build only loads with
   the sanitizer runtimes in ``LD_PRELOAD`` (the script sets that up).

Every extension depends on every ``fastattn/*.pxi`` and ``fastattn/src/*.h``
(found by glob), so a change to any of them rebuilds the kernels.
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _log(msg):
    print(f"fastattn build: {msg}", file=sys.stderr, flush=True)


def _is_x86_64():
    m = platform.machine().lower()
    return m in ("x86_64", "amd64", "x64")


# Per-ISA compile flags (GCC/clang spelling).  -fno-wrapv undoes the -fwrapv
# that Python's own CFLAGS add: with it gcc spilled loaded vectors inside the
# tile loops (docs/architecture.md, "Build flags").
ISA_FLAGS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
               "-mavx2", "-mfma"],
}
# bf16 builds (issue 12): the avx512 flags plus AVX512-BF16 (vdpbf16ps,
# vcvtneps2bf16), then AMX tiles (tdpbf16ps) on top.  Their fp32 kernels are
# the avx512 ones; only the bf16 GEMM/conversion code differs (fa_bf16.h).
ISA_FLAGS["avx512bf16"] = ISA_FLAGS["avx512"] + ["-mavx512bf16"]
ISA_FLAGS["amx"] = ISA_FLAGS["avx512bf16"] + ["-mamx-tile", "-mamx-bf16"]


def _compiler_kind():
    if sys.platform == "win32" and "GCC" not in sys.version:
        return "msvc"
    return "gcc"


def _probe_openmp():
    """Return (compile_flags, link_flags) for OpenMP, or None when unusable."""
    if os.environ.get("FASTATTN_USE_OMP", "1") == "0":
        _log("OpenMP disabled by FASTATTN_USE_OMP=0; kernels run serially")
        return None
    kind = _compiler_kind()
    if kind == "msvc":
        return (["/openmp"], [])
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if shutil.which(cc[0]) is None:
        cc = ["cc"]
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    src = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel num_threads(2)
            {
                #pragma omp atomic
                n += 1;
            }
            printf("%d\\n", n);
            return 0;
        }
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "omp_probe.c")
        exe = os.path.join(tmp, "omp_probe")
        with open(c_file, "w") as f:
            f.write(src)
        for cflags, lflags in candidates:
            try:
                subprocess.run(cc + cflags + [c_file, "-o", exe] + lflags,
                               check=True, capture_output=True, timeout=120)
                out = subprocess.run([exe], check=True, capture_output=True,
                                     timeout=60, text=True).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                continue
            if out == "2":
                return (cflags, lflags)
            _log(f"OpenMP probe ran but reported a team of {out!r}, not 2")
    return None


def _isa_list():
    if not _is_x86_64() or _compiler_kind() == "msvc":
        isas = ["baseline"]
    else:
        isas = ["baseline", "avx2", "avx512", "avx512bf16", "amx"]
    wanted = os.environ.get("FASTATTN_ISAS")
    if wanted:
        req = [w.strip() for w in wanted.split(",") if w.strip()]
        bad = [w for w in req if w not in isas]
        if bad:
            raise SystemExit(f"FASTATTN_ISAS names builds {bad} not possible "
                             f"here; choose from {isas}")
        isas = [w for w in isas if w in req]
        if "baseline" not in isas:
            isas.insert(0, "baseline")  # the fallback every CPU can run
    return isas


def _depends():
    return sorted(glob.glob(os.path.join("fastattn", "*.pxi"))
                  + glob.glob(os.path.join("fastattn", "src", "*.h")))


def _declared_extensions():
    """The extension modules, with names and sources only (cheap: no
    compiler, no probe).  :class:`BuildExt` fills in the flags."""
    deps = _depends()
    exts = [Extension(f"fastattn._kernels_{isa}",
                      sources=[f"fastattn/_kernels_{isa}.pyx"], depends=deps)
            for isa in _isa_list()]
    # Row-wise layer kernels (LayerNorm, RMSNorm, activations): memory-bound,
    # so one baseline build is enough.
    if os.path.exists(os.path.join("fastattn", "_layers.pyx")):
        exts.append(Extension("fastattn._layers", sources=["fastattn/_layers.pyx"],
                              depends=deps))
    return exts


def _openmp_flags():
    omp = _probe_openmp()
    if omp is None:
        if os.environ.get("FASTATTN_FAIL_NO_OPENMP", "0") == "1":
            raise SystemExit("fastattn build: OpenMP is unavailable and "
                             "FASTATTN_FAIL_NO_OPENMP=1 was set")
        _log("WARNING: no working OpenMP found; building SERIAL kernels. "
             "Install a compiler with OpenMP (e.g. gcc, or libomp for clang) "
             "for multi-threaded attention.")
        return [], []
    return omp


class BuildExt(build_ext):
    """``build_ext`` that probes OpenMP, sets the per-ISA flags and runs
    Cython only when extensions are really built."""

    def run(self):
        import numpy as np
        from Cython.Build import cythonize

        omp_c, omp_l = _openmp_flags()
        kind = _compiler_kind()
        base_c = ["/O2"] if kind == "msvc" else ["-O3", "-fno-wrapv", "-std=gnu11"]
        san_c = san_l = []
        if os.environ.get("FASTATTN_SANITIZE", "0") == "1":
            if kind == "msvc":
                raise SystemExit("FASTATTN_SANITIZE=1 needs gcc or clang")
            san_l = ["-fsanitize=address,undefined"]
            san_c = san_l + ["-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined",
                             "-O1", "-g"]
            _log(f"sanitizer build: {san_c}")
        macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        inc = [np.get_include(), os.path.join("fastattn", "src")]
        for ext in self.extensions:
            isa = ext.name.rsplit("_", 1)[-1] if "._kernels_" in ext.name else None
            cflags = (base_c + omp_c + (ISA_FLAGS[isa] if isa and kind != "msvc" else [])
                      + san_c)
            _log(f"{ext.name.split('.')[-1]}: cflags={cflags} ldflags={omp_l}")
            ext.include_dirs = inc + list(ext.include_dirs)
            ext.define_macros = macros + list(ext.define_macros)
            ext.extra_compile_args = cflags
            ext.extra_link_args = list(omp_l) + san_l
        directives = {
            "language_level": 3,
            "boundscheck": os.environ.get("FASTATTN_DEBUG_CYTHON", "0") == "1",
            "wraparound": False,
            "initializedcheck": False,
            "nonecheck": False,
            "cdivision": True,
            "embedsignature": True,
        }
        # cythonize returns new Extension objects with .c sources; copy those
        # onto ours, which setuptools has already registered (names, paths).
        done = {e.name: e for e in cythonize(self.extensions, compiler_directives=directives,
                                              quiet=True, force=self.force)}
        for ext in self.extensions:
            ext.sources = done[ext.name].sources
        super().run()


setup(ext_modules=_declared_extensions(), cmdclass={"build_ext": BuildExt})
