"""One short query after an idle pause: the latency a server of sporadic requests sees.

    python benchmarks/bench_query_idle.py [--threads 2] [--idle 0.2] [--rounds 15]
                                          [--cases "query 1 x ~12,1 x 128"]

Per round and implementation (interleaved): sleep ``--idle`` seconds, time one
call (the after-idle latency), then the best of 3 calls back to back (warm).
Implementations: fastattn (``SentenceEncoder``, ``--threads``), fastattn on
one thread, ONNX Runtime fp32 on the fused graph (as ``bench_models.py``
builds it), on the packaged all-MiniLM-L6-v2 (or ``--model``).  Reported:
median, 90th percentile and maximum after idle, warm median.  See
benchmarks/NOTES.md ("A short query after an idle pause") for why the two
differ on a VM.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _timing import default_threads, set_env_threads  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--idle", type=float, default=0.2, help="sleep before each timed call (s)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cases", default="query 1 x ~12,1 x 128")
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-ort", action="store_true")
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    set_env_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import bench_models as bm
    import fastattn
    from fastattn.models import SentenceEncoder
    from fastattn.models.sentence import default_model_folder

    folder = args.model or default_model_folder()
    impls = "fastattn" if args.no_ort else "fastattn,ort"
    with tempfile.TemporaryDirectory(prefix="bench_query_idle_") as work:
        fns, notes, extra = bm.build_impls(folder, impls.split(","), threads, 32, work)
        one = SentenceEncoder(folder, num_threads=1)
        fns["fastattn, 1 thread"] = lambda s: one.encode(s, show_progress_bar=False)
        fastattn.set_num_threads(threads)
        cases = bm.make_cases(extra["fastattn_encoder"].tokenizer, 10)
        print(f"{threads} threads, {args.idle} s idle before each timed call, "
              f"{args.rounds} rounds; {', '.join(f'{k}: {v}' for k, v in notes.items())}")
        for case in args.cases.split(","):
            s = cases[case.strip()]
            for f in fns.values():
                f(s)
            cold = {k: [] for k in fns}
            warm = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, f in fns.items():
                    time.sleep(args.idle)
                    t0 = time.perf_counter()
                    f(s)
                    cold[k].append(time.perf_counter() - t0)
                    w = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        f(s)
                        w.append(time.perf_counter() - t0)
                    warm[k].append(min(w))
            print(f"\n[{case.strip()}]\n\n| | after-idle median ms | p90 | max | warm median ms |\n"
                  "|---|---:|---:|---:|---:|")
            for k in fns:
                c = sorted(cold[k])
                print(f"| {k} | {statistics.median(c) * 1e3:.2f} | "
                      f"{c[min(len(c) - 1, int(0.9 * len(c)))] * 1e3:.2f} | {c[-1] * 1e3:.2f} | "
                      f"{statistics.median(warm[k]) * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
