"""Corpus embedding through fastattn.dask against the plain encoder.

    python benchmarks/bench_dask.py [--sentences 20000] [--partitions 16] [--repeat 3]

Configurations, each on the same corpus, timed in turn (medians of --repeat):

* ``single``: one process, ``SentenceEncoder(...).encode(corpus)`` with all
  the process's CPUs;
* ``dask 1x<n>``: a LocalCluster with one worker process (one Dask thread),
  fastattn using the worker's share of the CPUs (all of them);
* ``dask <n>x1``: one worker process per CPU, one fastattn thread each.

The workers load the model before timing starts (a small warm-up job), so
the times are steady-state throughput; the first job's extra time (worker
start-up + model load) is reported separately.  Overhead = Dask time /
single-process time - 1.  Results must equal the single-process embeddings
bit for bit; the script checks it.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def corpus(n, seed=0):
    """Deterministic sentences of 3-200 words (long-tailed), from a fixed
    vocabulary: lengths roughly like a web corpus's passages."""
    from fastattn.models.sentence import default_model_folder
    vocab_file = os.path.join(default_model_folder(), "vocab.txt")
    with open(vocab_file, encoding="utf-8") as f:
        vocab = [w.strip() for w in f if w.strip().isalpha() and len(w.strip()) > 2]
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(mean=3.0, sigma=0.8, size=n), 3, 200).astype(int)
    words = rng.choice(np.array(vocab, dtype=object), size=int(lens.sum()))
    out, i = [], 0
    for k in lens:
        out.append(" ".join(words[i:i + k]) + ".")
        i += k
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=20000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import dask.bag as db
    from distributed import Client, LocalCluster
    import fastattn
    import fastattn.dask as fdask
    from fastattn.models.sentence import SentenceEncoder, default_model_folder

    model = default_model_folder()
    texts = corpus(args.sentences)
    ncpu = fastattn.get_num_threads()
    print(f"# CPU: {cpu_name()}, {ncpu} CPUs usable; {len(texts)} sentences, "
          f"{args.partitions} partitions, batch {args.batch_size}")

    enc = SentenceEncoder(model)
    enc.encode(texts[:64])                      # warm-up
    ref = None
    rows = []

    def timed(fn):
        ts = []
        out = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), out

    t_single, ref = timed(lambda: enc.encode(texts, batch_size=args.batch_size))
    rows.append(("single process", 1, ncpu, t_single, 0.0, True))

    bag = db.from_sequence(texts, npartitions=args.partitions)
    for nworkers in (1, ncpu):
        with LocalCluster(n_workers=nworkers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster) as client:
            per = fdask.worker_threads(client)
            t0 = time.perf_counter()
            fdask.encode(db.from_sequence(texts[:64], npartitions=nworkers),
                         model).compute()
            first = time.perf_counter() - t0
            t, out = timed(lambda: fdask.encode(bag, model,
                                                batch_size=args.batch_size).compute())
            same = bool(np.array_equal(out, ref))
            label = f"dask {nworkers} worker(s) x {min(per.values())} thread(s)"
            rows.append((label, nworkers, min(per.values()), t, first, same))

    print(f"| configuration | workers | fastattn threads each | median s | sentences/s "
          f"| vs single | first job extra s | identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    res = []
    for label, nw, nt, t, first, same in rows:
        print(f"| {label} | {nw} | {nt} | {t:.2f} | {len(texts) / t:.0f} | "
              f"{t_single / t:.2f}x | {first:.2f} | {'yes' if same else 'NO'} |")
        res.append(dict(config=label, workers=nw, threads=nt, seconds=t,
                        sentences_per_s=len(texts) / t, first_job_s=first,
                        identical=same, overhead=t / t_single - 1))
    best = min(r["seconds"] for r in res[1:])
    print(f"\nDask overhead over the plain encoder (best Dask configuration): "
          f"{100 * (best / t_single - 1):+.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_name(), sentences=len(texts),
                           partitions=args.partitions, rows=res), f, indent=1)
    if not all(r["identical"] for r in res):
        print("ERROR: Dask results differ from the single-process encoder",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
