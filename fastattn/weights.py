"""Reading and writing weights; conversion from PyTorch modules.

* :func:`save_file` / :func:`load_file`: the safetensors format, written
  and read here in pure NumPy (no extra dependency, no code execution):
  an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
  {str: str}}``, then the raw little-endian tensor bytes, offsets relative to
  the end of the header.  Every header is checked before any data is read:
  a malformed header, an unknown dtype, offsets out of bounds, overlapping
  or leaving gaps, or a size that does not match the shape raise
  ``ValueError``; nothing is ever read outside the file.
* :func:`save` / :func:`load`: by file suffix, ``.safetensors`` or ``.npz``
  (``numpy.load(allow_pickle=False)``).
* :func:`from_torch`: a fastattn layer with the weights of a ``torch.nn``
  module (torch is imported only by the call, from the module given).
"""
import json
import os
import struct

import numpy as np

__all__ = ["save_file", "load_file", "save", "load", "from_torch",
           "torch_state_dict"]

# safetensors dtype codes <-> NumPy (little-endian); BF16 is read as float32
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),
}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100_000_000   # bytes; the limit the safetensors library uses


def _code(dtype):
    dt = np.dtype(dtype).newbyteorder("=")
    try:
        return _CODES[dt]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored in safetensors") from None


def save_file(tensors, path, metadata=None):
    """Write ``{name: ndarray}`` to ``path`` in the safetensors format.

    Parameters
    ----------
    tensors : dict of str -> array_like
        Numeric or bool arrays (any strides; written C-ordered, little-endian).
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
        arrays[name] = a
    # largest alignment first, then by name: the order safetensors writes
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    off = 0
    for name in order:
        a = arrays[name]
        nbytes = a.size * a.dtype.itemsize
        header[name] = {"dtype": _code(a.dtype), "shape": list(a.shape),
                        "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)          # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in order:
            a = arrays[name]
            le = a.astype(a.dtype.newbyteorder("<"), copy=False)
            f.write(np.ascontiguousarray(le).tobytes())


def _parse_header(buf, file_size):
    if file_size < 8:
        raise ValueError(f"not a safetensors file: {file_size} bytes, need at least 8")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > _MAX_HEADER:
        raise ValueError(f"safetensors header length {n} exceeds the {_MAX_HEADER}-byte limit")
    if 8 + n > file_size:
        raise ValueError(f"safetensors header length {n} runs past the end of "
                         f"the file ({file_size} bytes)")
    raw = bytes(buf[8:8 + n])
    if not raw.startswith(b"{"):
        raise ValueError("safetensors header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header must be a JSON object")
    return n, header


def _check_entries(header, data_size):
    meta = header.pop("__metadata__", None)
    if meta is not None and (not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise ValueError("safetensors __metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: header entry must be an object")
        code = info.get("dtype")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if code not in _DTYPES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {code!r}")
        if (not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ValueError(f"tensor {name!r}: shape must be a list of "
                             f"non-negative ints, got {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ValueError(f"tensor {name!r}: data_offsets must be [begin, end], got {offs!r}")
        b, e = offs
        if not 0 <= b <= e <= data_size:
            raise ValueError(f"tensor {name!r}: data_offsets {offs} are outside the "
                             f"{data_size}-byte data section")
        count = 1
        for s in shape:
            count *= s
        if (e - b) != count * _DTYPES[code].itemsize:
            raise ValueError(f"tensor {name!r}: {e - b} bytes for shape {tuple(shape)} "
                             f"of {code} (needs {count * _DTYPES[code].itemsize})")
        entries.append((b, e, name, code, tuple(shape)))
    entries.sort()
    pos = 0
    for b, e, name, _, _ in entries:
        if b != pos:
            what = "overlaps the previous tensor" if b < pos else "leaves a gap before it"
            raise ValueError(f"tensor {name!r}: data_offsets start at {b}, which {what} "
                             f"(previous data ends at {pos})")
        pos = e
    if pos != data_size:
        raise ValueError(f"safetensors data section has {data_size} bytes but the "
                         f"tensors cover {pos}")
    return entries, (meta or {})


def load_file(path, with_metadata=False):
    """Read a safetensors file into ``{name: ndarray}`` (native byte order,
    owned copies; ``BF16`` widened to float32).

    Parameters
    ----------
    path : str or os.PathLike
    with_metadata : bool
        Also return the ``__metadata__`` dict.

    Raises
    ------
    ValueError
        Malformed header or offsets (checked before any tensor is read).
    """
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    n, header = _parse_header(data, size)
    start = 8 + n
    entries, meta = _check_entries(header, size - start)
    out = {}
    for b, e, name, code, shape in entries:
        dt = _DTYPES[code]
        arr = np.frombuffer(data, dtype=dt, count=(e - b) // dt.itemsize,
                            offset=start + b).reshape(shape)
        if code == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = arr.astype(dt.newbyteorder("="), copy=True)
        out[name] = arr
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


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def torch_state_dict(module):
    """``module.state_dict()`` as ``{name: ndarray}`` (detached copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _torch_dtype(module):
    for p in module.parameters():
        name = str(p.dtype)
        if name == "torch.float64":
            return np.float64
        return np.float32
    return np.float32


def _torch_activation(layer):
    import torch.nn.functional as F
    act = layer.activation
    if act is F.relu or type(act).__name__ == "ReLU":
        return "relu"
    if act is F.gelu:
        return "gelu"
    if type(act).__name__ == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if act is F.silu or type(act).__name__ == "SiLU":
        return "silu"
    raise NotImplementedError(f"activation {act!r} has no fastattn equivalent")


def _from_mha(m, dtype):
    from .nn import MultiHeadAttention
    if m.bias_k is not None or m.add_zero_attn:
        raise NotImplementedError("nn.MultiheadAttention with add_bias_kv or "
                                  "add_zero_attn is not supported")
    if not m._qkv_same_embed_dim and m.in_proj_bias is None:
        bias = m.out_proj.bias is not None
    else:
        bias = m.in_proj_bias is not None
    return MultiHeadAttention(m.embed_dim, m.num_heads, bias=bias, kdim=m.kdim,
                              vdim=m.vdim, batch_first=m.batch_first, dtype=dtype)


def _enc_layer(m, dtype):
    from .nn import TransformerEncoderLayer
    return TransformerEncoderLayer(
        m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
        0.0, _torch_activation(m), m.norm1.eps, m.self_attn.batch_first,
        m.norm_first, m.linear1.bias is not None, dtype=dtype)


def _dec_layer(m, dtype):
    from .nn import TransformerDecoderLayer
    return TransformerDecoderLayer(
        m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
        0.0, _torch_activation(m), m.norm1.eps, m.self_attn.batch_first,
        m.norm_first, m.linear1.bias is not None, dtype=dtype)


def _norm(m, dtype):
    if m is None:
        return None
    return _convert(m, dtype)


def _convert(m, dtype):
    from . import nn
    kind = type(m).__name__
    if kind == "Linear" or kind == "NonDynamicallyQuantizableLinear":
        return nn.Linear(m.in_features, m.out_features, m.bias is not None, dtype=dtype)
    if kind == "LayerNorm":
        return nn.LayerNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                            bias=m.bias is not None, dtype=dtype)
    if kind == "RMSNorm":
        return nn.RMSNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                          dtype=dtype)
    if kind == "MultiheadAttention":
        return _from_mha(m, dtype)
    if kind == "TransformerEncoderLayer":
        return _enc_layer(m, dtype)
    if kind == "TransformerDecoderLayer":
        return _dec_layer(m, dtype)
    if kind == "TransformerEncoder":
        return nn.TransformerEncoder(_enc_layer(m.layers[0], dtype), len(m.layers),
                                     _norm(m.norm, dtype))
    if kind == "TransformerDecoder":
        return nn.TransformerDecoder(_dec_layer(m.layers[0], dtype), len(m.layers),
                                     _norm(m.norm, dtype))
    if kind == "Transformer":
        enc = _convert(m.encoder, dtype)
        dec = _convert(m.decoder, dtype)
        sa = m.encoder.layers[0].self_attn
        return nn.Transformer(sa.embed_dim, sa.num_heads, custom_encoder=enc,
                              custom_decoder=dec, batch_first=sa.batch_first,
                              dtype=dtype)
    raise NotImplementedError(f"from_torch does not know torch.nn.{kind}")


def from_torch(module, dtype=None):
    """A fastattn layer with the configuration and weights of a PyTorch module.

    Supported: ``Linear``, ``LayerNorm``, ``RMSNorm``, ``MultiheadAttention``
    (without ``add_bias_kv`` / ``add_zero_attn``), ``TransformerEncoderLayer``,
    ``TransformerDecoderLayer``, ``TransformerEncoder``, ``TransformerDecoder``
    and ``Transformer`` (activations ReLU, GELU exact or tanh, SiLU).

    Parameters
    ----------
    module : torch.nn.Module
    dtype : float32 or float64, optional
        Defaults to the module's parameter dtype (float64 stays float64,
        anything else becomes float32).

    Returns
    -------
    fastattn.nn.Module
        Same ``state_dict`` names as the torch module; evaluates like the
        torch module in eval mode (dropout off).
    """
    dt = _torch_dtype(module) if dtype is None else dtype
    layer = _convert(module, dt)
    sd = torch_state_dict(module)
    if type(module).__name__ == "MultiheadAttention" and layer.in_proj_bias is None:
        sd.pop("in_proj_bias", None)
    layer.load_state_dict(sd, strict=True)
    return layer
