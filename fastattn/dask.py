"""Sentence embeddings of a corpus on a Dask cluster.

``encode(texts, model)`` maps :meth:`fastattn.models.SentenceEncoder.encode`
over the partitions of a ``dask.bag.Bag`` of strings or a ``dask.dataframe``
string column and returns a ``dask.array.Array`` of embeddings, one chunk of
rows per input partition, in input order.

How the work is laid out
------------------------
* The task graph carries the model's *folder and options*, never its weights.
  Each worker process loads the model once, the first time one of its tasks
  needs it, and keeps it in a per-process cache keyed by (folder, dtype,
  max_seq_length); later tasks and later jobs reuse it.
* Inside a worker, fastattn runs one OpenMP team over the worker's share of
  the machine's cores.  Run Dask with **one task at a time per worker
  process** (one Dask thread)::

      LocalCluster(n_workers=N, threads_per_worker=1)
      dask worker tcp://scheduler:8786 --nworkers N --nthreads 1

  On 2 cores, 2 workers x 1 thread ran at 0.94x the plain encoder and
  1 worker x 2 threads at 0.85x (benchmarks/RESULTS.md): a worker's own
  event-loop threads share the cores with a multi-thread OpenMP team.
  Dask's nanny sets ``OMP_NUM_THREADS=1`` in its workers (to stop NumPy's
  BLAS from oversubscribing), so fastattn's own default would be one thread.
  Instead, when a ``distributed`` client is active, :func:`encode` asks every
  worker once for its host and the CPUs it may use, and each task runs with
  ``cpus // (worker processes on that host × threads per worker)`` threads:
  several worker processes sharing a machine split its cores instead of each
  starting a full team.  ``num_threads=`` overrides this.
* Results equal a single-process ``SentenceEncoder(...).encode(all_texts)``
  bit for bit, whatever the partitioning: the encoder is padding-free, so a
  sentence's embedding does not depend on the other sentences of its batch.

Dask and distributed are optional (``pip install "fastattn[dask]"``);
``import fastattn`` never imports them.
"""
import os
import threading

import numpy as np

__all__ = ["encode", "load_encoder", "worker_threads"]

_cache = {}
_cache_lock = threading.Lock()


def _import_dask():
    try:
        import dask  # noqa: F401
        import dask.array  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised without dask
        raise ImportError("fastattn.dask needs Dask: pip install "
                          "\"fastattn[dask]\" (dask[array,bag,dataframe] "
                          "and distributed)") from e
    import dask
    return dask


def _model_spec(model, dtype, max_seq_length):
    """(folder, dtype, max_seq_length) from a folder, None or an encoder."""
    from .models.sentence import SentenceEncoder, default_model_folder
    if isinstance(model, SentenceEncoder):
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype={dtype!r} differs from the encoder's "
                             f"dtype {model.dtype!r}")
        if max_seq_length is not None and max_seq_length != model.max_seq_length:
            raise ValueError(f"max_seq_length={max_seq_length!r} differs from "
                             f"the encoder's {model.max_seq_length!r}")
        return (str(model.folder), model.dtype, model.max_seq_length)
    if model is None:
        folder = default_model_folder()
    elif isinstance(model, (str, os.PathLike)):
        folder = os.fspath(model)
    else:
        raise TypeError("model must be a folder path, None (the packaged "
                        "all-MiniLM-L6-v2) or a fastattn.models."
                        f"SentenceEncoder, got {type(model).__name__}")
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"model folder {folder!r} does not exist")
    return (folder, "float32" if dtype is None else dtype, max_seq_length)


def load_encoder(folder, dtype="float32", max_seq_length=None):
    """The process's cached :class:`~fastattn.models.SentenceEncoder` for
    ``(folder, dtype, max_seq_length)``, loaded on first use."""
    key = (os.path.abspath(os.fspath(folder)), dtype, max_seq_length)
    enc = _cache.get(key)
    if enc is None:
        with _cache_lock:
            enc = _cache.get(key)
            if enc is None:
                from .models.sentence import SentenceEncoder
                enc = SentenceEncoder(key[0], dtype=dtype,
                                      max_seq_length=max_seq_length)
                _cache[key] = enc
    return enc


def _usable_cpus():
    import sys
    from . import threads  # noqa: F401  (the module, not the function)
    return sys.modules["fastattn.threads"].usable_cpus().count


def _worker_facts():
    import socket
    try:
        from distributed import get_worker
        nthreads = get_worker().state.nthreads
    except Exception:  # pragma: no cover - not inside a worker
        nthreads = 1
    return socket.gethostname(), _usable_cpus(), nthreads


def worker_threads(client):
    """``{host: threads}``: fastattn threads per task on each host of
    ``client``'s cluster, so that the worker processes of a host share its
    CPUs (``cpus // (processes × dask threads per process)``, at least 1)."""
    facts = client.run(_worker_facts)
    per_host = {}
    for host, cpus, nthreads in facts.values():
        n, c = per_host.get(host, (0, cpus))
        per_host[host] = (n + max(1, int(nthreads)), min(c, cpus))
    return {h: max(1, c // n) for h, (n, c) in per_host.items()}


def _active_client():
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _encode_partition(texts, spec, threads_by_host, num_threads, batch_size,
                      kwargs):
    import socket
    enc = load_encoder(*spec)
    texts = list(texts)
    if num_threads is None and threads_by_host:
        num_threads = threads_by_host.get(socket.gethostname())
    from .threads import threads
    if num_threads is None:
        out = enc.encode(texts, batch_size=batch_size, show_progress_bar=False, **kwargs)
    else:
        with threads(num_threads):
            out = enc.encode(texts, batch_size=batch_size, show_progress_bar=False,
                             **kwargs)
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2:  # pragma: no cover - encode(list) is always 2-D
        out = out.reshape(len(texts), -1)
    return out


def _partitions(texts):
    """Delayed partitions of ``texts`` (a Bag or a string Series)."""
    import dask.bag as db
    if isinstance(texts, db.Bag):
        return texts.to_delayed()
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - dataframe extra missing
        dd = None
    if dd is not None and isinstance(texts, dd.Series):
        return texts.to_delayed()
    if dd is not None and isinstance(texts, dd.DataFrame):
        raise TypeError("texts is a dask DataFrame: pass one string column, "
                        "e.g. df['text']")
    raise TypeError("texts must be a dask.bag.Bag of strings or a "
                    f"dask.dataframe string column, got {type(texts).__name__}")


def encode(texts, model=None, *, batch_size=32, dtype=None,
           max_seq_length=None, num_threads=None, lengths=None,
           **encode_kwargs):
    """Embed every string of ``texts`` on the Dask scheduler in use.

    Parameters
    ----------
    texts : dask.bag.Bag of str, or dask.dataframe.Series of str
        The corpus; one output chunk per input partition.
    model : str or os.PathLike or SentenceEncoder or None
        A sentence-transformers folder, an encoder (its folder and options
        are used, not its weights), or None for the packaged
        all-MiniLM-L6-v2.
    batch_size : int
        Passed to :meth:`SentenceEncoder.encode`.
    dtype, max_seq_length : optional
        Encoder options (see :class:`~fastattn.models.SentenceEncoder`).
    num_threads : int, optional
        fastattn threads per task; default: each host's CPUs divided among
        its Dask worker threads (see the module docstring).
    lengths : sequence of int or True, optional
        Rows per partition, making the result's chunk sizes (and ``N``)
        known; ``True`` computes them first (one pass over the input).
        Default: unknown (``nan``) chunk sizes, as Dask gives for bags.
    **encode_kwargs
        ``normalize_embeddings``, ``prompt_name``, ``prompt``: passed on.
        ``show_progress_bar`` is not (use Dask's diagnostics).

    Returns
    -------
    dask.array.Array
        ``(N, dim)`` float32 embeddings in input order.
    """
    dask = _import_dask()
    import dask.array as da
    from dask import delayed
    if "show_progress_bar" in encode_kwargs:
        raise TypeError("show_progress_bar is not supported here: use Dask's "
                        "progress bar (dask.diagnostics.ProgressBar or "
                        "distributed.progress)")
    allowed = {"normalize_embeddings", "prompt_name", "prompt"}
    bad = sorted(set(encode_kwargs) - allowed)
    if bad:
        raise TypeError(f"unexpected keyword arguments {bad}; encode_kwargs "
                        f"may be {sorted(allowed)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_threads is not None:
        from .threads import resolve
        num_threads = resolve(num_threads)
    parts = _partitions(texts)
    spec = _model_spec(model, dtype, max_seq_length)
    # the embedding size, from the encoder loaded (once, cached) here too;
    # this also checks the folder before any task runs
    dim = load_encoder(*spec).dim
    if lengths is True:
        lengths = list(dask.compute(*[delayed(len)(p) for p in parts]))
    if lengths is not None:
        lengths = [int(n) for n in lengths]
        if len(lengths) != len(parts):
            raise ValueError(f"lengths has {len(lengths)} entries for "
                             f"{len(parts)} partitions")
        if any(n < 0 for n in lengths):
            raise ValueError("lengths must be non-negative")
    client = _active_client()
    by_host = worker_threads(client) if (client is not None and num_threads is None) else None
    tasks = [delayed(_encode_partition, pure=True)(
        p, spec, by_host, num_threads, int(batch_size), dict(encode_kwargs))
        for p in parts]
    rows = tuple(lengths) if lengths is not None else (np.nan,) * len(tasks)
    if not tasks:
        return da.zeros((0, dim), dtype=np.float32)
    # one block per input partition, empty ones included (da.concatenate
    # would drop zero-length blocks and break the partition alignment)
    from dask.highlevelgraph import HighLevelGraph
    name = "fastattn-encode-" + dask.base.tokenize(*[t.key for t in tasks])
    layer = {(name, i, 0): t.key for i, t in enumerate(tasks)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=tasks)
    return da.Array(graph, name, chunks=(rows, (dim,)), dtype=np.float32)
