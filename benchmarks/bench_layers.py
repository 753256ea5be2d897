"""Benchmark fastattn's transformer encoder against torch and NumPy.

One run times, at the same thread count for everybody, on the same weights
and inputs (float32, ``batch_first``, ReLU, ``dim_feedforward = 4 d_model``,
heads of 64, post-norm, eval / inference mode):

- ``fastattn``  :class:`fastattn.nn.TransformerEncoderLayer` / ``TransformerEncoder``
  converted with :func:`fastattn.from_torch`
- ``torch``     ``torch.nn.TransformerEncoderLayer`` / ``TransformerEncoder`` under
  ``torch.inference_mode()`` (its fused "fast path": native multi-head
  attention and ``_transformer_encoder_layer_fwd``)
- ``numpy``     the same layer composed from NumPy expressions (``numpy_encoder_layer``
  below: materialised softmax, NumPy LayerNorm)

- ``blas gemms only``  not an implementation: just the four projections per
  layer through NumPy's BLAS, the floor for anything whose GEMMs run at BLAS
  speed (reported as the "ceiling" speed-up over torch)

for one layer and a 6-layer stack at (B, L) = (8, 128), (8, 512), (1, 2048)
and d_model 384 and 768.  Implementations are timed round-robin: each round
runs one block per implementation (order rotating every round), a block being
``--settle`` seconds of sleep (so the previous library's spinning thread pool
does not steal a core), one warm-up call and ``--block`` timed back-to-back
calls.  A busy machine thus slows all of them alike; medians of the calls are
reported (steady-state throughput).  Every output is compared with torch's
before timing.

It also prints where fastattn's time goes (an instrumented call: attention
kernel, GEMMs, fused row kernels, the rest), so the next bottleneck is
visible.

Usage::

    python benchmarks/bench_layers.py                    # full grid, all cores
    python benchmarks/bench_layers.py --quick            # one small cell per size
    python benchmarks/bench_layers.py --kernels          # fused row kernels vs NumPy
    python benchmarks/bench_layers.py --threads 1 --repeat 9 --no-results-md

Outputs: a Markdown table on stdout, ``results/layers.json``,
``results/layers.png`` and the ``bench_layers`` section of ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

try:  # run as a script or as a module
    from _timing import (busy_warning, default_threads, describe_machine, limit_threads,
                         machine_info, optional_import, write_json)
except ImportError:  # pragma: no cover
    from benchmarks._timing import (busy_warning, default_threads, describe_machine,
                                    limit_threads, machine_info, optional_import, write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("fastattn", "torch", "numpy")
GEMM_FLOOR = "blas gemms only"
SHAPES = ((8, 128), (8, 512), (1, 2048))
D_MODELS = (384, 768)
DEPTHS = (1, 6)
HEAD_DIM = 64
RESULTS_BEGIN = "<!-- bench_layers:begin -->"
RESULTS_END = "<!-- bench_layers:end -->"


# ----------------------------------------------------------------------------
# the NumPy composition


def _np_layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    d = x - mean
    var = (d * d).mean(-1, keepdims=True)
    return d / np.sqrt(var + eps) * w + b


def numpy_encoder_layer(p, x, nhead, eps=1e-5):
    """One post-norm ReLU encoder layer in plain NumPy (``p``: a torch-named
    state dict of float32 arrays; ``x``: (B, L, E))."""
    B, L, E = x.shape
    D = E // nhead
    qkv = x @ p["self_attn.in_proj_weight"].T + p["self_attn.in_proj_bias"]
    qkv = qkv.reshape(B, L, 3, nhead, D).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(D))
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    a = (s @ v).transpose(0, 2, 1, 3).reshape(B, L, E)
    a = a @ p["self_attn.out_proj.weight"].T + p["self_attn.out_proj.bias"]
    x = _np_layer_norm(x + a, p["norm1.weight"], p["norm1.bias"], eps)
    h = np.maximum(x @ p["linear1.weight"].T + p["linear1.bias"], 0)
    f = h @ p["linear2.weight"].T + p["linear2.bias"]
    return _np_layer_norm(x + f, p["norm2.weight"], p["norm2.bias"], eps)


def numpy_encoder(states, x, nhead):
    for p in states:
        x = numpy_encoder_layer(p, x, nhead)
    return x


# ----------------------------------------------------------------------------
# building the three implementations of one cell


def make_cell(torch, fastattn, d_model, depth, B, L, seed=0):
    """Return ``({impl: callable}, x)`` for one configuration, all sharing one
    set of random weights."""
    from fastattn.nn.convert import from_torch, torch_state_dict

    torch.manual_seed(seed)
    nhead = d_model // HEAD_DIM
    layer = torch.nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.0,
                                             batch_first=True)
    if depth == 1:
        tmod = layer.eval()
    else:
        tmod = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).eval()
        with torch.no_grad():   # distinct weights per layer
            for prm in tmod.parameters():
                prm.add_(0.01 * torch.randn_like(prm))
    fmod = from_torch(tmod)
    sd = torch_state_dict(tmod)
    if depth == 1:
        states = [sd]
    else:
        states = [{k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"layers.{i}.")}
                  for i in range(depth)]
    x = np.random.default_rng(seed).standard_normal((B, L, d_model)).astype(np.float32)
    tx = torch.from_numpy(x)

    def run_torch():
        with torch.inference_mode():
            return tmod(tx).numpy()

    impls = {
        "fastattn": lambda: fmod(x),
        "torch": run_torch,
        "numpy": lambda: numpy_encoder(states, x, nhead),
        GEMM_FLOOR: blas_gemms_only(states, x),
    }
    return impls, fmod, x


def blas_gemms_only(states, x):
    """A callable doing only the layers' four projections per layer with
    NumPy's BLAS into preallocated outputs: the time any implementation
    whose GEMMs run at BLAS speed cannot go below."""
    M, E = x.shape[0] * x.shape[1], x.shape[2]
    x2 = x.reshape(M, E)
    h = np.random.default_rng(1).standard_normal((M, 4 * E)).astype(x.dtype)
    work = []
    for p in states:
        for name, inp in (("self_attn.in_proj_weight", x2), ("self_attn.out_proj.weight", x2),
                          ("linear1.weight", x2), ("linear2.weight", h)):
            w = p[name]
            work.append((inp, w.T, np.empty((M, w.shape[0]), x.dtype)))

    def run():
        for a, wt, out in work:
            np.matmul(a, wt, out=out)
    return run


# ----------------------------------------------------------------------------
# fastattn's time split


@contextlib.contextmanager
def instrumented():
    """Accumulate wall time per category of fastattn.nn's calls."""
    import fastattn.nn._ops as ops
    import fastattn.nn.attention as attention
    import fastattn.nn.layers as layers
    import fastattn.nn.transformer as transformer

    acc = {"attention": 0.0, "gemm": 0.0, "row kernels": 0.0}
    saved = []

    def wrap(mod, name, key):
        fn = getattr(mod, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t0

        saved.append((mod, name, fn))
        setattr(mod, name, timed)

    for mod in (layers, attention, transformer):
        wrap(mod, "gemm", "gemm")
    # the attention's input projections go through gemm_via (which GEMM ran
    # decides its thread count); layers.gemm calls it too, so wrap it only
    # where the attention module looks it up
    wrap(attention, "gemm_via", "gemm")
    wrap(attention, "scaled_dot_product_attention", "attention")
    for name in ("add_norm", "bias_act", "swiglu"):
        wrap(ops, name, "row kernels")
    try:
        yield acc
    finally:
        for mod, name, fn in reversed(saved):
            setattr(mod, name, fn)


def time_split(fn, repeat=3, settle=0.1):
    """Median over ``repeat`` instrumented calls: seconds per category plus
    ``"rest"`` (Python, allocation, the QKV bias add) and ``"total"``."""
    rows = []
    for _ in range(repeat):
        time.sleep(settle)
        with instrumented() as acc:
            t0 = time.perf_counter()
            fn()
            total = time.perf_counter() - t0
        row = dict(acc)
        row["rest"] = max(0.0, total - sum(acc.values()))
        row["total"] = total
        rows.append(row)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# ----------------------------------------------------------------------------
# timing


def round_robin(fns, repeat, settle, warmup=1, block=3):
    """Time each callable in blocks of ``block`` back-to-back calls, one block
    of each per round (order rotating).  Before a block: ``settle`` s of
    sleep, so the previous library's spinning thread pool has gone quiet,
    and ``warmup`` untimed calls, so the block sees a warm steady state
    (throughput, as a server calling the model again and again would).
    Returns {name: [seconds per call]}."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            time.sleep(settle)
            for _ in range(warmup):
                fns[n]()
            for _ in range(block):
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return times


def kernel_bench(repeat, threads):
    """Fused row kernels against the NumPy expressions they replace."""
    from fastattn.nn import _ops

    rows = []
    rng = np.random.default_rng(0)
    for N, C in ((1024, 384), (4096, 768), (2048, 3072)):
        a = rng.standard_normal((N, C)).astype(np.float32)
        r = rng.standard_normal((N, C)).astype(np.float32)
        w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
        out = np.empty_like(a)
        cases = {
            "bias + residual + LayerNorm": (
                lambda: _ops.add_norm(a, b, r, "layer", w, b, 1e-5, n=out),
                lambda: _np_layer_norm(a + b + r, w, b, 1e-5)),
            "RMSNorm": (
                lambda: _ops.add_norm(a, None, None, "rms", w, None, 1e-6, n=out),
                lambda: a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-6) * w),
            "bias + ReLU": (
                lambda: _ops.bias_act(a, b, "relu", out=out),
                lambda: np.maximum(np.add(a, b, out=out), 0, out=out)),
            "bias + GELU (erf)": (
                lambda: _ops.bias_act(a, b, "gelu", out=out),
                lambda: _np_gelu(a + b)),
        }
        for name, (fused, ref) in cases.items():
            t = round_robin({"fused": fused, "numpy": ref}, repeat, 0.0, block=1)
            mf, mn = statistics.median(t["fused"]), statistics.median(t["numpy"])
            rows.append((name, N, C, mf * 1e3, mn * 1e3, mn / mf))
    print(f"\nFused row kernels vs NumPy ({threads} threads, medians)\n")
    print("| operation | rows × features | fused ms | NumPy ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, N, C, mf, mn, s in rows:
        print(f"| {name} | {N} × {C} | {mf:.3f} | {mn:.3f} | {s:.1f}× |")
    return rows


def _np_gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x * np.float32(0.7071067811865476)))


# ----------------------------------------------------------------------------
# reporting


def markdown(results, threads):
    lines = [f"Encoder throughput, float32, {threads} threads, medians of round-robin "
             "blocks of back-to-back calls (tokens/s = B·L / time; speed-up = torch time / fastattn time).", "",
             "| layers | d_model | B × L | fastattn ms | torch ms | NumPy ms | vs torch | vs NumPy "
             "| fastattn tokens/s | max abs diff | BLAS GEMMs alone ms | ceiling vs torch |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        med = {k: (statistics.median(v) if v else None) for k, v in r["times"].items()}

        def ms(k):
            return f"{med[k] * 1e3:.1f}" if med.get(k) else "n/a"

        vs_t = f"{med['torch'] / med['fastattn']:.2f}×" if med.get("torch") else "n/a"
        vs_n = f"{med['numpy'] / med['fastattn']:.2f}×" if med.get("numpy") else "n/a"
        tok = r["B"] * r["L"] / med["fastattn"]
        ceil = f"{med['torch'] / med[GEMM_FLOOR]:.2f}×" if med.get("torch") else "n/a"
        lines.append(f"| {r['depth']} | {r['d_model']} | {r['B']} × {r['L']} | {ms('fastattn')} | "
                     f"{ms('torch')} | {ms('numpy')} | {vs_t} | {vs_n} | {tok:,.0f} | "
                     f"{r['max_abs_diff']:.1e} | {ms(GEMM_FLOOR)} | {ceil} |")
    lines += ["", "*BLAS GEMMs alone*: only the layers' four projections per layer "
              "(QKV, output, two feed-forward), NumPy/BLAS into preallocated outputs, timed in "
              "the same rounds. *Ceiling vs torch* = torch time / that time: the largest "
              "speed-up any implementation whose GEMMs run at BLAS speed could reach, even "
              "with attention, norms and activations for free."]
    lines += ["", "Where fastattn's time goes (one instrumented call, median of 3; ms and share):", "",
              "| layers | d_model | B × L | total | GEMMs | attention kernel | row kernels | rest |",
              "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["split"]
        tot = s["total"]

        def cell(k):
            return f"{s[k] * 1e3:.1f} ({100 * s[k] / tot:.0f}%)"
        lines.append(f"| {r['depth']} | {r['d_model']} | {r['B']} × {r['L']} | {tot * 1e3:.1f} | "
                     f"{cell('gemm')} | {cell('attention')} | {cell('row kernels')} | {cell('rest')} |")
    return "\n".join(lines)


def plot(results, path):
    mpl, why = optional_import("matplotlib")
    if mpl is None:
        print(f"no plot: {why}", file=sys.stderr)
        return
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    labels, fa_t, np_t, ceil = [], [], [], []
    for r in results:
        med = {k: (statistics.median(v) if v else None) for k, v in r["times"].items()}
        labels.append(f"{r['depth']}L d{r['d_model']}\n{r['B']}×{r['L']}")
        fa_t.append(med["torch"] / med["fastattn"] if med.get("torch") else 0)
        np_t.append(med["torch"] / med["numpy"] if med.get("torch") and med.get("numpy") else 0)
        ceil.append(med["torch"] / med[GEMM_FLOOR] if med.get("torch") else np.nan)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    ax.bar(x - 0.2, fa_t, 0.4, label="fastattn")
    ax.bar(x + 0.2, np_t, 0.4, label="NumPy")
    ax.scatter(x - 0.2, ceil, marker="_", s=300, color="k", zorder=3,
               label="ceiling: BLAS GEMMs alone")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.2, color="r", lw=0.8, ls="--", label="target 1.2×")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("throughput relative to torch eval")
    ax.set_title("Transformer encoder, float32")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_results_md(path, text):
    """Replace the bench_layers section of RESULTS.md (create it if needed)."""
    block = f"{RESULTS_BEGIN}\n{text}\n{RESULTS_END}"
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    if RESULTS_BEGIN in old and RESULTS_END in old:
        i, j = old.index(RESULTS_BEGIN), old.index(RESULTS_END) + len(RESULTS_END)
        new = old[:i] + block + old[j:]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


# ----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="threads for everybody (default: all cores)")
    p.add_argument("--d-models", default=",".join(map(str, D_MODELS)))
    p.add_argument("--shapes", default=",".join(f"{b}x{l}" for b, l in SHAPES),
                   help="comma-separated BxL")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per cell")
    p.add_argument("--settle", type=float, default=0.1, help="sleep before each block (s)")
    p.add_argument("--block", type=int, default=3, help="timed back-to-back calls per block")
    p.add_argument("--quick", action="store_true", help="d_model 384, B×L 8×128 only, 3 rounds")
    p.add_argument("--kernels", action="store_true", help="only the fused row kernels vs NumPy")
    p.add_argument("--json", default=os.path.join(HERE, "results", "layers.json"))
    p.add_argument("--plot", default=os.path.join(HERE, "results", "layers.png"))
    p.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--no-results-md", action="store_true", help="do not touch RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or default_threads()
    torch, why = optional_import("torch")
    import fastattn

    limit_threads(threads)      # BLAS, OpenMP, torch (imported above)
    fastattn.set_num_threads(threads)
    warn = busy_warning()
    if warn:
        print(f"WARNING: {warn}", file=sys.stderr)
    if args.kernels:
        kernel_bench(max(args.repeat, 20), threads)
        return 0
    if torch is None:
        print(f"torch is needed for the layer benchmark ({why})", file=sys.stderr)
        return 1
    d_models = [int(v) for v in args.d_models.split(",")]
    shapes = [tuple(int(t) for t in s.split("x")) for s in args.shapes.split(",")]
    depths = [int(v) for v in args.depths.split(",")]
    impls = [i for i in args.impls.split(",") if i in IMPLS]
    if args.quick:
        d_models, shapes, args.repeat = [384], [(8, 128)], 3
    results = []
    for depth in depths:
        for d in d_models:
            for B, L in shapes:
                fns, fmod, x = make_cell(torch, fastattn, d, depth, B, L)
                ref = fns["torch"]()
                diff = float(np.abs(fns["fastattn"]() - ref).max())
                if "numpy" in impls:
                    ndiff = float(np.abs(fns["numpy"]() - ref).max())
                    if ndiff > 1e-3:
                        print(f"warning: NumPy composition differs from torch by {ndiff:.1e}",
                              file=sys.stderr)
                times = round_robin({k: fns[k] for k in impls + [GEMM_FLOOR]}, args.repeat,
                                    args.settle, block=args.block)
                split = time_split(fns["fastattn"], settle=args.settle)
                med = {k: statistics.median(v) for k, v in times.items()}
                line = " ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items())
                print(f"[{depth} layer(s), d={d}, B={B}, L={L}] {line}  "
                      f"(max |fastattn - torch| = {diff:.1e})", file=sys.stderr, flush=True)
                results.append({"depth": depth, "d_model": d, "nhead": d // HEAD_DIM,
                                "dim_feedforward": 4 * d, "B": B, "L": L, "times": times,
                                "split": split, "max_abs_diff": diff})
    text = markdown(results, threads)
    info = machine_info()
    print(text)
    print("\nMachine:\n" + describe_machine(info))
    write_json(args.json, {"benchmark": "bench_layers", "threads": threads, "results": results,
                           "machine": info, "argv": sys.argv[1:]})
    plot(results, args.plot)
    if not args.no_results_md:
        update_results_md(args.results_md,
                          "## Transformer encoder layers (`bench_layers.py`)\n\n"
                          + f"`python benchmarks/bench_layers.py {' '.join(sys.argv[1:])}`".strip()
                          + f", {time.strftime('%Y-%m-%d')}\n\n" + text
                          + "\n\nMachine:\n" + describe_machine(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
