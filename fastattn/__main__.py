"""The ``fastattn`` command (also ``python -m fastattn``): ``info``, ``demo``.

Each subcommand is a function ``run(args) -> exit status`` registered in
:data:`COMMANDS` with the :func:`subcommand` decorator, which also declares its
arguments; :func:`main` builds the argument parser from that table.
"""
import argparse
import importlib
import platform
import sys
import time

import numpy as np


COMMANDS = {}
"""name -> (help, [(flags, argparse keyword arguments)], run)"""


def subcommand(name, help, arguments=()):
    """Register ``run(args) -> int`` as subcommand ``name``."""
    def register(run):
        COMMANDS[name] = (help, list(arguments), run)
        return run
    return register


@subcommand("info", "version, kernel build, OpenMP, threads, BLAS")
def _info(args=None):
    import fastattn
    from fastattn import _dispatch
    k = fastattn.kernels
    print(f"fastattn {fastattn.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"kernel build: {fastattn.isa} (compiled for {k.ISA}); "
          f"available here: {', '.join(_dispatch.available_builds())}")
    feats = sorted(f for f in _dispatch.cpu_features()
                   if f.startswith(("AVX", "FMA", "SSE4", "ASIMD", "NEON")))
    print(f"cpu features: {' '.join(feats)}")
    amx = _dispatch.amx_status or (False, "not checked (no AVX512-BF16)")
    print(f"bf16 GEMM: {getattr(k, 'BF16_PATH', '?')} microkernel; AMX: "
          f"{'usable' if amx[0] else 'unavailable: ' + amx[1]}")
    for note in _dispatch.fallback_notes:
        print(f"self-check: {note}")
    print(f"openmp: {'on' if k.OPENMP else 'OFF (serial build)'}")
    print("threads: {} (from {})".format(*fastattn.describe_num_threads()))
    print(f"tiles: {k.TILE_ROWS} query rows x {k.TILE_KEYS} keys; "
          f"split-K chunk {k.SPLIT_KEYS} keys")
    print(f"numpy {np.__version__}; BLAS: {_blas_name()}")
    return 0


def _blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:  # pragma: no cover - old numpy
        return "unknown"


def _median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


@subcommand("demo", "self-check and speed against NumPy", [
    (("--seq",), {"type": int, "default": 1024, "help": "sequence length L = S"}),
    (("--heads",), {"type": int, "default": 8}),
    (("--repeat",), {"type": int, "default": 5, "help": "timed calls per path"}),
])
def _demo(args):
    import fastattn
    from fastattn import reference
    rng = np.random.default_rng(0)
    B, H, L, D = 1, args.heads, args.seq, 64
    print(f"fastattn {fastattn.__version__} demo: attention on (B={B}, H={H}, "
          f"L=S={L}, D={D}) float32, {fastattn.get_num_threads()} threads, "
          f"kernel build {fastattn.isa}")
    q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(3))
    ok = True
    for causal in (False, True):
        out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref = reference.scaled_dot_product_attention(q, k, v, is_causal=causal)
        err = float(np.max(np.abs(out - ref)))
        good = err <= 2e-5
        ok &= good

        def numpy_attn():
            s = (q @ k.swapaxes(-1, -2)) * np.float32(1 / np.sqrt(D))
            if causal:
                s = s + np.triu(np.full((L, L), -np.inf, np.float32), 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            return (s / s.sum(-1, keepdims=True)) @ v

        t_fa = _median_time(lambda: fastattn.scaled_dot_product_attention(
            q, k, v, is_causal=causal), args.repeat)
        t_np = _median_time(numpy_attn, args.repeat)
        flops = 4 * B * H * L * L * D / (2 if causal else 1)
        print(f"  causal={causal!s:5}  max|err| vs float64 reference {err:.2e} "
              f"[{'ok' if good else 'FAIL'}]  fastattn {flops / t_fa / 1e9:6.1f} "
              f"GFLOP/s  numpy {flops / t_np / 1e9:6.1f} GFLOP/s  "
              f"speed-up x{t_np / t_fa:.1f}")
    print("self-check passed" if ok else "SELF-CHECK FAILED")
    return 0 if ok else 1


# Subcommands defined by other modules, each with ``add_parser(subparsers)``
# (returning its parser) and ``run(args) -> int``.
_PLUGINS = ("fastattn.models._cli", "fastattn.models._generate_cli")


def main(argv=None):
    """Entry point of the ``fastattn`` console script; returns the exit status."""
    p = argparse.ArgumentParser(prog="fastattn", description="fastattn: fast CPU attention.")
    sub = p.add_subparsers(dest="cmd")
    for name, (help_, arguments, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        for flags, kw in arguments:
            sp.add_argument(*flags, **kw)
    plugins = {}
    for modname in _PLUGINS:
        mod = importlib.import_module(modname)
        plugins[mod.add_parser(sub).prog.split()[-1]] = mod.run
    args = p.parse_args(argv)
    if args.cmd in plugins:
        return plugins[args.cmd](args)
    if args.cmd is None:
        p.print_help()
        return 0
    return COMMANDS[args.cmd][2](args)


if __name__ == "__main__":
    sys.exit(main())
