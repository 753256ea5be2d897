"""Reading and writing weights (no code is ever executed from a file).

* :func:`save_file` / :func:`load_file`: the safetensors format through the
  ``safetensors`` package (>= 0.8), the format's reference implementation
  (``safetensors.numpy.save_file``; ``safe_open(..., framework="numpy",
  backend="pread")``).
* :func:`open_safetensors`: a lazy reader, one tensor at a time, for
  checkpoints larger than one wants in memory twice.
* :func:`save` / :func:`load`: by file suffix, ``.safetensors`` or ``.npz``
  (``numpy.load(allow_pickle=False)``).

Every file is checked before any tensor is read: the 8-byte little-endian
header length and the JSON header ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}`` are read here (for validation
only) and a malformed header, an unknown dtype, offsets outside the data,
overlapping or leaving gaps, or a byte count that does not match the shape
raise a ``ValueError`` that names the file and the tensor.  The package
checks the same things, but its messages do not say which rule was broken;
anything it raises is re-raised as a ``ValueError`` naming the file.

The tensor bytes come from the package, except for ``BF16``: NumPy has no
bfloat16 type, so those bytes are read at the offsets of the checked header
and widened to float32.  Conversion from PyTorch modules is
:func:`fastattn.from_torch` (:mod:`fastattn.nn.convert`).
"""
import json
import os
import struct

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors import __version__ as _st_version
from safetensors import numpy as _st_numpy

__all__ = ["save_file", "load_file", "open_safetensors", "SafetensorsFile",
           "save", "load"]

# safetensors dtype codes <-> NumPy (little-endian); BF16 is read as float32
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),
}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100_000_000   # bytes; the limit the safetensors package uses


def _code(dtype):
    dt = np.dtype(dtype).newbyteorder("=")
    try:
        return _CODES[dt]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored in safetensors") from None


# what the package raises for a file it rejects (after the checks here, only
# for a file changed behind our back)
_PACKAGE_ERRORS = (SafetensorError, TypeError, AttributeError, ValueError)


def _package_error(path, e):
    return ValueError(f"{path}: the safetensors package could not read the file "
                      f"({type(e).__name__}: {e})")


def _safe_open(path):
    """The package's reader with its ``pread`` backend: the default ``mmap``
    one dies of SIGBUS when the file is truncated while it is open (a
    checkpoint rewritten in place); ``pread`` raises an error instead."""
    try:
        return safe_open(path, framework="numpy", backend="pread")
    except TypeError as e:
        if "backend" not in str(e):
            raise _package_error(path, e) from e
        raise ImportError(f"fastattn needs safetensors >= 0.8 (its pread backend); "
                          f"this is safetensors {_st_version}") from e
    except _PACKAGE_ERRORS as e:
        raise _package_error(path, e) from e


def save_file(tensors, path, metadata=None):
    """Write ``{name: ndarray}`` to ``path`` in the safetensors format.

    Parameters
    ----------
    tensors : dict of str -> array_like
        Numeric or bool arrays (any strides or byte order; written C-ordered,
        little-endian).
    path : str or os.PathLike
    metadata : dict of str -> str, optional
        Stored under ``"__metadata__"``.
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict of str -> str")
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        a = np.asarray(a)
        _code(a.dtype)
        # the package reads size * itemsize bytes from the data pointer: give
        # it a C-ordered little-endian array (np.asarray keeps 0-d arrays 0-d)
        arrays[name] = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")
    p = os.fspath(path)
    try:
        _st_numpy.save_file(arrays, p, metadata=dict(metadata) if metadata else None)
    except SafetensorError as e:
        raise ValueError(f"{p}: could not write safetensors file: {e}") from e


def _read_header(f, path, size):
    """``(n, header)``: the header length and the parsed JSON header."""
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, need at least 8")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER:
        raise ValueError(f"{path}: safetensors header length {n} exceeds the "
                         f"{_MAX_HEADER}-byte limit")
    if 8 + n > size:
        raise ValueError(f"{path}: safetensors header length {n} runs past the end "
                         f"of the file ({size} bytes)")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: file shrank while its header was read")
    if not raw.startswith(b"{"):
        raise ValueError(f"{path}: safetensors header does not start with '{{'")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header must be a JSON object")
    return n, header


def _check_entries(header, data_size, path):
    """``({name: (begin, end, code, shape)}, metadata)`` after checking every
    entry and that the tensors tile the data section exactly."""
    meta = header.pop("__metadata__", None)
    if meta is not None and (not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise ValueError(f"{path}: safetensors __metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise ValueError(f"{where}: header entry must be an object")
        code = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if code not in _DTYPES:
            raise ValueError(f"{where}: unsupported dtype {code!r} (fastattn reads "
                             f"{', '.join(_DTYPES)})")
        if (not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ValueError(f"{where}: shape must be a list of non-negative ints, "
                             f"got {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ValueError(f"{where}: data_offsets must be [begin, end], got {offs!r}")
        b, e = offs
        if not 0 <= b <= e <= data_size:
            raise ValueError(f"{where}: data_offsets {offs} are outside the "
                             f"{data_size}-byte data section")
        count = 1
        for s in shape:
            count *= s
        if (e - b) != count * _DTYPES[code].itemsize:
            raise ValueError(f"{where}: {e - b} bytes for shape {tuple(shape)} of "
                             f"{code} (needs {count * _DTYPES[code].itemsize})")
        entries.append((b, e, name, code, tuple(shape)))
    entries.sort()
    pos = 0
    for b, e, name, _, _ in entries:
        if b != pos:
            what = "overlaps the previous tensor" if b < pos else "leaves a gap before it"
            raise ValueError(f"{path}: tensor {name!r}: data_offsets start at {b}, "
                             f"which {what} (previous data ends at {pos})")
        pos = e
    if pos != data_size:
        raise ValueError(f"{path}: safetensors data section has {data_size} bytes "
                         f"but the tensors cover {pos}")
    return {name: (b, e, code, shape) for b, e, name, code, shape in entries}, meta or {}


class SafetensorsFile:
    """A checked safetensors file, read one tensor at a time.

    Made by :func:`open_safetensors`; use it as a context manager (or call
    :meth:`close`).  The header is checked when the file is opened; each
    :meth:`get` then reads only that tensor's bytes.

    Attributes
    ----------
    path : str
    metadata : dict of str -> str
        The header's ``__metadata__`` (empty if none).
    """

    def __init__(self, path):
        self.path = p = os.fspath(path)
        self._handle = None
        self._file = f = open(p, "rb")       # kept open: BF16 bytes come from it
        try:
            size = os.fstat(f.fileno()).st_size
            n, header = _read_header(f, p, size)
            self._start = 8 + n
            self._entries, self.metadata = _check_entries(header, size - self._start, p)
            self._handle = _safe_open(p)
            self._same_as_package()
        except BaseException:
            self.close()
            raise

    def _same_as_package(self):
        """The package's header must be the one checked here (the file could
        have been replaced between the two opens)."""
        h = self._handle
        ok = sorted(h.keys()) == sorted(self._entries)
        for name, (_, _, code, shape) in self._entries.items() if ok else ():
            sl = h.get_slice(name)
            ok = ok and sl.get_dtype() == code and tuple(sl.get_shape()) == shape
        if not ok:
            raise ValueError(f"{self.path}: the file changed while it was being opened")

    # -- what is in the file --------------------------------------------------
    def keys(self):
        """Tensor names in file order (by offset)."""
        return list(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def _entry(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def shape(self, name):
        """Shape of tensor ``name`` (from the header; nothing is read)."""
        return self._entry(name)[3]

    def dtype(self, name):
        """The NumPy dtype :meth:`get` returns for ``name`` (``BF16`` is
        widened to float32)."""
        code = self._entry(name)[2]
        return np.dtype(np.float32) if code == "BF16" else _DTYPES[code].newbyteorder("=")

    # -- reading ----------------------------------------------------------------
    def get(self, name):
        """Tensor ``name`` as a new writeable array in native byte order."""
        b, e, code, shape = self._entry(name)
        if self._file is None:
            raise ValueError(f"{self.path}: the file is closed")
        if code == "BF16":
            return self._bf16(b, e, shape)
        try:
            arr = self._handle.get_tensor(name)
        except _PACKAGE_ERRORS as err:
            raise _package_error(self.path, err) from err
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return arr if arr.flags.writeable else arr.copy()

    __getitem__ = get

    def items(self):
        """``(name, array)`` pairs, one tensor read at a time, in file order."""
        for name in self._entries:
            yield name, self.get(name)

    def _bf16(self, b, e, shape):
        raw = os.pread(self._file.fileno(), e - b, self._start + b)
        if len(raw) != e - b:
            raise ValueError(f"{self.path}: the file shrank since it was opened")
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)

    def close(self):
        """Release the file (arrays already read stay valid)."""
        h, self._handle = self._handle, None
        if h is not None:
            h.__exit__(None, None, None)
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


def open_safetensors(path):
    """Open a safetensors file for lazy, per-tensor reads.

    >>> with fastattn.weights.open_safetensors("model.safetensors") as f:
    ...     for name in f.keys():
    ...         w = f.get(name)          # reads only this tensor

    Raises
    ------
    ValueError
        The file is not a valid safetensors file (the message names it).
    """
    return SafetensorsFile(path)


def load_file(path, with_metadata=False):
    """Read a safetensors file into ``{name: ndarray}`` (native byte order,
    writeable arrays; ``BF16`` widened to float32).

    Parameters
    ----------
    path : str or os.PathLike
    with_metadata : bool
        Also return the ``__metadata__`` dict.

    Raises
    ------
    ValueError
        Malformed header or offsets (checked before any tensor is read); the
        message names the file.
    """
    with open_safetensors(path) as f:
        out = dict(f.items())
        meta = f.metadata
    return (out, meta) if with_metadata else out


def save(tensors, path, metadata=None):
    """Save ``{name: ndarray}``: ``.npz`` files through ``numpy.savez``,
    anything else as safetensors (:func:`save_file`)."""
    if str(path).endswith(".npz"):
        np.savez(path, **{k: np.asarray(v) for k, v in tensors.items()})
    else:
        save_file(tensors, path, metadata)


def load(path):
    """Load ``{name: ndarray}`` from a ``.npz`` (``allow_pickle=False``) or a
    safetensors file.  Never executes code from the file."""
    p = os.fspath(path)
    if p.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return load_file(p)
