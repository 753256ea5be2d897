"""Peak resident memory added by ONE attention call.

For each sequence length and implementation a fresh Python subprocess:

1. imports the implementation and makes one tiny warm-up call (thread pools,
   lazy library state: one-off costs, not per-call ones);
2. allocates q, k, v (B, H, L, D) and touches every page;
3. resets the resident-set high-water mark (``/proc/self/clear_refs`` ← 5;
   without it the baseline is the high-water mark so far) and reads VmRSS;
4. makes one call and reads VmHWM again.

"Added" is VmHWM after the call minus VmRSS before it: the peak extra memory
the call needed, including its output array (listed separately). A fused
kernel should add little more than the output; the NumPy reference
materialises the B·H·L·S score matrix (8 GiB at B=1, H=8, L=16384, float32).

Usage::

    python benchmarks/bench_memory.py                      # L = 4096 and 16384
    python benchmarks/bench_memory.py --L 16384 --impls fastattn,torch
    python benchmarks/bench_memory.py --impls fastattn,numpy,torch,ort_attention --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _timing import (default_threads, describe_machine, machine_info, optional_import,  # noqa: E402
                     set_env_threads, write_json)

DEFAULT_IMPLS = ("fastattn", "numpy", "torch")
ALL_IMPLS = ("fastattn", "numpy", "torch", "ort_mha", "ort_attention")
MiB = 2**20


# ----------------------------------------------------------------------------
# memory probes


def read_status() -> dict:
    """VmRSS and VmHWM of this process in bytes (Linux), else ru_maxrss only."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    if "VmHWM" not in out:  # ru_maxrss: KiB on Linux, bytes on macOS
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["VmHWM"] = ru if sys.platform == "darwin" else ru * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------
# child: one implementation, one call


def child(args) -> dict:
    import numpy as np

    import bench_attention as ba

    dtype = np.dtype(args.dtype)
    case = ba.Case("mha", args.B, args.H, args.H, args.L, args.L, args.D, args.causal)
    fa_module = None
    if args.impl == "fastattn":
        fa_module, why = optional_import(args.fastattn_module)
        if fa_module is None:
            return {"status": "n/a", "reason": f"cannot import {args.fastattn_module!r}: {why}"}

    def build(c, q, k, v):
        if args.impl == "fastattn":
            return ba.make_fastattn(c, q, k, v, args.threads, fa_module)
        if args.impl == "numpy":
            return ba.make_numpy(c, q, k, v, args.threads, max_bytes=float("inf"))
        return ba.MAKERS[args.impl](c, q, k, v, args.threads)

    # 1. import + warm-up on a tiny problem
    tiny = ba.Case("mha", 1, args.H, args.H, 64, 64, args.D, args.causal)
    try:
        run, _ = build(tiny, *ba.make_inputs(tiny, dtype))
        run()
        del run
    except ba.NotAvailable as exc:
        return {"status": "n/a", "reason": str(exc)}
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    except ImportError:
        pass

    # 2. inputs, every page written by the generator (no float64 temporaries)
    q, k, v = ba.make_inputs(case, dtype)
    try:
        run, _ = build(case, q, k, v)  # ORT: builds the session and binds the output here
    except ba.NotAvailable as exc:
        return {"status": "n/a", "reason": str(exc)}

    # 3. baseline
    did_reset = reset_peak()
    before = read_status()
    rss_before = before.get("VmRSS", before["VmHWM"])
    baseline = rss_before if did_reset else before["VmHWM"]

    # 4. one call
    t0 = time.perf_counter()
    try:
        out = run()
    except MemoryError as exc:
        return {"status": "n/a", "reason": f"MemoryError: {exc}"}
    elapsed = time.perf_counter() - t0
    after = read_status()
    out_bytes = int(np.asarray(out).nbytes) if args.impl not in ("ort_mha", "ort_attention") else 0
    return {
        "status": "ok",
        "rss_before": rss_before,
        "hwm_after": after["VmHWM"],
        "added": after["VmHWM"] - baseline,
        "hwm_reset": did_reset,
        "inputs_bytes": q.nbytes + k.nbytes + v.nbytes,
        "output_bytes": out_bytes,
        "call_s": elapsed,
        "note": "output preallocated and bound before the call (IOBinding)" if out_bytes == 0 else None,
    }


# ----------------------------------------------------------------------------
# parent


def run_child(impl, L, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--L", str(L),
           "--B", str(args.B), "--H", str(args.H), "--D", str(args.D), "--dtype", args.dtype,
           "--threads", str(args.threads), "--fastattn-module", args.fastattn_module]
    if args.causal:
        cmd.append("--causal")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "n/a", "reason": f"timed out after {args.timeout:g} s"}
    for line in reversed(res.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
    reason = f"child failed (exit {res.returncode}): {tail[0][:200]}"
    if res.returncode < 0:
        reason += " (killed: out of memory?)"
    return {"status": "n/a", "reason": reason}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", default="4096,16384", help="comma list of sequence lengths (L = S)")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="default: all usable cores")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma list from {','.join(ALL_IMPLS)}")
    p.add_argument("--fastattn-module", default=os.environ.get("FASTATTN_BENCH_MODULE", "fastattn"))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    p.add_argument("--mem-margin-gib", type=float, default=2.0,
                   help="skip a child whose estimated need leaves less than this free (default 2)")
    p.add_argument("--json", metavar="FILE", default=os.path.join(HERE, "results", "memory.json"),
                   help="raw results (default benchmarks/results/memory.json; '' to skip)")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table here")
    p.add_argument("--child", metavar="IMPL", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def estimate_bytes(impl, args, L) -> int:
    """Rough peak of a child: inputs + output + the score matrix for the
    materialising implementations."""
    item = 4 if args.dtype == "float32" else 8
    io = 4 * args.B * args.H * L * args.D * item
    scores = args.B * args.H * L * L * item
    return io + (scores if impl in ("numpy", "ort_mha", "ort_attention") else 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is None:
        args.threads = default_threads()
    set_env_threads(args.threads)
    if args.child:
        args.L = int(args.L)
        args.impl = args.child
        print(json.dumps(child(args)))
        return 0

    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(ALL_IMPLS)
    if unknown:
        raise SystemExit(f"unknown --impls {sorted(unknown)}; choose from {ALL_IMPLS}")
    Ls = [int(x) for x in args.L.split(",")]
    fa_ok = optional_import(args.fastattn_module)[0] is not None
    info = machine_info(args.fastattn_module if fa_ok else "fastattn", with_fastattn_info=fa_ok)
    rows = []
    for L in Ls:
        for impl in impls:
            need = estimate_bytes(impl, args, L)
            avail = mem_available()
            print(f"[memory] L={L} {impl} ...", file=sys.stderr, flush=True)
            if avail is not None and need + args.mem_margin_gib * 2**30 > avail:
                rec = {"status": "n/a", "reason": f"skipped: needs ~{need / 2**30:.1f} GiB, "
                                                  f"{avail / 2**30:.1f} GiB available"}
            else:
                rec = run_child(impl, L, args)
            rec.update(impl=impl, L=L)
            rows.append(rec)

    shape = f"B={args.B}, H={args.H}, D={args.D}, {args.dtype}{', causal' if args.causal else ''}"
    lines = [f"## Peak memory added by one call ({shape}, {args.threads} thread(s))", "",
             describe_machine(info), "",
             "| L = S | impl | inputs MiB | output MiB | RSS before MiB | added MiB | added − output MiB | "
             "call s | note |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['L']} | {r['impl']} | | | | n/a | | | {r['reason']} |")
            continue
        lines.append(
            f"| {r['L']} | {r['impl']} | {r['inputs_bytes'] / MiB:.0f} | {r['output_bytes'] / MiB:.0f} | "
            f"{r['rss_before'] / MiB:.0f} | **{r['added'] / MiB:.1f}** | "
            f"{(r['added'] - r['output_bytes']) / MiB:.1f} | {r['call_s']:.2f} | "
            f"{r.get('note') or ''}{'' if r.get('hwm_reset') else ' (HWM not resettable: upper bound)'} |")
    lines += ["", "Added = VmHWM after the call − VmRSS before it, in a fresh process per row, after a tiny "
                  "warm-up call and with the inputs allocated and touched. Score matrix for reference: "
              + ", ".join(f"L={L}: {args.B * args.H * L * L * (4 if args.dtype == 'float32' else 8) / MiB:,.0f} MiB"
                          for L in Ls), ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.json:
        write_json(args.json, {"benchmark": "memory", "args": vars(args), "machine": info, "rows": rows})
        print(f"[memory] raw results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
