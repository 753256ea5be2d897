"""``python -m fastattn info | demo``."""
import argparse
import platform
import sys
import time

import numpy as np


def _info():
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
    print(f"openmp: {'on' if k.OPENMP else 'OFF (serial build)'}")
    print(f"threads: {fastattn.get_num_threads()}")
    print(f"tiles: {k.TILE_ROWS} query rows x {k.TILE_KEYS} keys; "
          f"split-K chunk {k.SPLIT_KEYS} keys")
    print(f"numpy {np.__version__}; BLAS: {_blas_name()}")


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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastattn")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("info", help="version, kernel build, OpenMP, threads, BLAS")
    d = sub.add_parser("demo", help="self-check and speed against NumPy")
    d.add_argument("--seq", type=int, default=1024)
    d.add_argument("--heads", type=int, default=8)
    d.add_argument("--repeat", type=int, default=5)
    from .models import _cli as _embed_cli     # `embed` (sentence embeddings)
    _embed_cli.add_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "info":
        _info()
        return 0
    if args.cmd == "demo":
        return _demo(args)
    if args.cmd == "embed":
        return args.func(args)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
