"""Reading a Hugging Face model folder for the decoder models.

``config.json`` (and ``generation_config.json`` when present) as dicts, and
the tensors of ``model.safetensors`` or of a sharded checkpoint
(``model.safetensors.index.json`` with its ``weight_map``), read lazily one
tensor at a time through ``safetensors.safe_open(..., framework="numpy")``.
No pickle file is ever opened: a folder with only ``pytorch_model.bin`` is
an error.  BF16 tensors (which NumPy cannot hold) are read from the file's
header offsets and widened to float32 exactly.
"""
import json
import os
import struct

import numpy as np

from ._validate import check_json_file

__all__ = ["read_json", "Checkpoint"]


def read_json(path, what):
    check_json_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{what} {path!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {path!r} must hold a JSON object")
    return d


def _folder(folder):
    try:
        p = os.fspath(folder)
    except TypeError:
        raise TypeError(f"folder must be a path, got {type(folder).__name__}") from None
    if not os.path.isdir(p):
        raise ValueError(f"model folder {p!r} does not exist or is not a directory")
    return p


def read_config(folder):
    """``(folder, config, generation_config)`` of a model folder."""
    p = _folder(folder)
    cfg = os.path.join(p, "config.json")
    if not os.path.isfile(cfg):
        raise ValueError(f"model folder {p!r} has no config.json")
    config = read_json(cfg, "config")
    gen = {}
    gp = os.path.join(p, "generation_config.json")
    if os.path.isfile(gp):
        gen = read_json(gp, "generation config")
    return p, config, gen


class Checkpoint:
    """The tensors of a folder's safetensors checkpoint, by name.

    Use as a context manager; :meth:`get` reads one tensor (cast to the
    requested dtype, C-contiguous); :meth:`unused` lists the names never read.
    """

    def __init__(self, folder):
        try:
            from safetensors import safe_open
        except ImportError:  # pragma: no cover - optional dependency
            raise ImportError("loading checkpoints needs the 'safetensors' package "
                              "(pip install safetensors)") from None
        self._safe_open = safe_open
        p = _folder(folder)
        single = os.path.join(p, "model.safetensors")
        index = os.path.join(p, "model.safetensors.index.json")
        self.files = {}          # tensor name -> file path
        if os.path.isfile(single):
            with _opened(safe_open, single) as f:
                for k in f.keys():
                    self.files[k] = single
        elif os.path.isfile(index):
            idx = read_json(index, "checkpoint index")
            wm = idx.get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise ValueError(f"checkpoint index {index!r} has no weight_map")
            for k, fn in wm.items():
                if not isinstance(fn, str) or os.path.basename(fn) != fn:
                    raise ValueError(f"checkpoint index {index!r}: shard {fn!r} of tensor "
                                     f"{k!r} is not a file name in the folder")
                path = os.path.join(p, fn)
                if not os.path.isfile(path):
                    raise ValueError(f"checkpoint index {index!r} names shard {fn!r}, "
                                     f"which is missing from the folder")
                self.files[k] = path
        else:
            found = sorted(os.listdir(p))
            hint = ""
            if any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in found):
                hint = (" (pickle checkpoints such as pytorch_model.bin are not read: "
                        "they can execute code; convert to safetensors)")
            raise ValueError(f"model folder {p!r} has no model.safetensors or "
                             f"model.safetensors.index.json{hint}")
        self.folder = p
        self._open = {}
        self._used = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for f in self._open.values():
            f.__exit__(None, None, None)
        self._open = {}

    def names(self):
        return set(self.files)

    def __contains__(self, name):
        return name in self.files

    def _handle(self, path):
        f = self._open.get(path)
        if f is None:
            f = _opened(self._safe_open, path).__enter__()
            self._open[path] = f
        return f

    def shape(self, name):
        f = self._handle(self.files[name])
        return tuple(f.get_slice(name).get_shape())

    def get(self, name, dtype, shape=None):
        """Tensor ``name`` as a C-contiguous array of ``dtype``; ``shape``
        (when given) is checked."""
        if name not in self.files:
            raise ValueError(f"checkpoint in {self.folder!r} has no tensor {name!r}")
        path = self.files[name]
        f = self._handle(path)
        code, got = _slice_info(f, name, path)
        if shape is not None and got != tuple(shape):   # before reading any data
            raise ValueError(f"tensor {name!r} has shape {got}, the config "
                             f"implies {tuple(shape)}")
        try:
            if code == "BF16":
                a = _read_bf16(path, name)
            else:
                a = f.get_tensor(name)
        except (ValueError, TypeError):
            raise
        except Exception as e:   # safetensors' own error type
            raise ValueError(f"tensor {name!r} in {path} could not be read: {e}") from None
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(a.shape)}, the config "
                             f"implies {tuple(shape)}")
        if a.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}, expected a float tensor")
        _check_finite(a, name, path)
        self._used.add(name)
        return np.ascontiguousarray(a, dtype=dtype)

    def unused(self):
        return sorted(set(self.files) - self._used)


def _opened(safe_open, path):
    """``safe_open(path)``; a malformed file is a ValueError naming it."""
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:   # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def _slice_info(f, name, path):
    """(dtype code, shape) of a tensor from the file header, without
    reading it; ValueError when the file (an index's shard) lacks it."""
    try:
        sl = f.get_slice(name)
        return sl.get_dtype(), tuple(int(d) for d in sl.get_shape())
    except Exception as e:
        raise ValueError(f"tensor {name!r} is not in {path} ({e})") from None


def _check_finite(a, name, path):
    """NaN or infinite weights would only surface as NaN logits later."""
    if not np.isfinite(a).all():
        raise ValueError(f"tensor {name!r} in {path} holds NaN or infinite values")


def _read_bf16(path, name):
    """A BF16 tensor widened to float32 (exact: bf16 is the top half of an
    IEEE float32), located through the safetensors header."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
        info = header[name]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        fh.seek(8 + n + b)
        raw = np.frombuffer(fh.read(e - b), dtype="<u2")
    if raw.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"tensor {name!r}: {e - b} bytes do not hold shape {shape} of BF16")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
