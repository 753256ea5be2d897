"""Embed a corpus with fastattn on Dask and write the embeddings to storage,
without gathering them on the client.

    python examples/embed_corpus.py INPUT OUTPUT.zarr [--column text]
           [--scheduler tcp://host:8786 | --workers N] [--model FOLDER]

INPUT is a Parquet file or folder (with a string column, ``--column``) or a
text file with one passage per line.  OUTPUT.zarr receives an ``(N, dim)``
float32 array, written partition by partition by the workers.  Without
``--scheduler`` a LocalCluster with ``--workers`` processes (default 1) and
one Dask thread each is started on this machine; fastattn splits the
machine's CPUs between them.
"""
import argparse
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--column", default="text")
    ap.add_argument("--model", default=None, help="sentence-transformers folder "
                    "(default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--blocksize", default="8MiB",
                    help="text input: bytes per partition")
    args = ap.parse_args(argv)

    import dask.array as da
    import dask.bag as db
    from distributed import Client, LocalCluster, progress
    import fastattn.dask as fdask

    if args.scheduler:
        client = Client(args.scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        if args.input.endswith((".txt", ".text")):
            texts = db.read_text(args.input, blocksize=args.blocksize).map(str.rstrip)
        else:
            import dask.dataframe as dd
            texts = dd.read_parquet(args.input, columns=[args.column])[args.column]
        # lengths=True: one cheap pass to learn the rows per partition, so
        # the zarr store gets regular, known chunk boundaries
        emb = fdask.encode(texts, args.model, lengths=True)
        emb = emb.rechunk({0: "auto", 1: -1})
        store = da.to_zarr(emb, args.output, overwrite=True, compute=False)
        fut = client.compute(store)
        progress(fut)
        fut.result()
        print(f"\nwrote {emb.shape[0]} x {emb.shape[1]} float32 to {args.output}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
