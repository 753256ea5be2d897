"""Reading an encoder's Hugging Face folder: ``config.json`` and safetensors.

Weights are read with ``safetensors.safe_open(path, framework="numpy")``:
the format holds raw tensors only, so loading never executes code (a
``pytorch_model.bin`` pickle is never opened).  Tensors are read one at a
time, only those a model asks for, each converted once to the model's
dtype; a sharded checkpoint (``model.safetensors.index.json`` and its
``weight_map``) opens only the shards that hold requested tensors.
"""
import json
import math
import numbers
import os

import numpy as np

from ._validate import JSON_ERRORS, check_json_file

__all__ = ["read_config", "Checkpoint", "ConfigReader"]

_FLOAT_CODES = ("F64", "F32", "F16", "BF16")


def read_config(folder):
    """``folder/config.json`` as a dict (``ValueError`` when missing or not
    a JSON object)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"model folder {folder!r} does not exist or is not a directory")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: a Hugging Face model folder needs config.json")
    check_json_file(path, "config")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except JSON_ERRORS as e:
        raise ValueError(f"{path} could not be read as JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


class ConfigReader:
    """Typed, validated access to config fields; every error names the file,
    the field and the value."""

    def __init__(self, cfg, path):
        self.cfg = cfg
        self.path = path

    def _err(self, name, what, v):
        return ValueError(f"{self.path}: {name} must be {what}, got {v!r}")

    def get(self, name, default=None):
        return self.cfg.get(name, default)

    def pos_int(self, name, default=None, minimum=1):
        v = self.cfg.get(name, default)
        if v is None:
            raise ValueError(f"{self.path}: required field {name} is missing")
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self._err(name, what, v)
        return int(v)

    def pos_float(self, name, default):
        v = self.cfg.get(name, default)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
                not math.isfinite(v) or v <= 0:
            raise self._err(name, "a positive finite number", v)
        return float(v)

    def string(self, name, default):
        v = self.cfg.get(name, default)
        if not isinstance(v, str):
            raise self._err(name, "a string", v)
        return v

    def false(self, name):
        """A flag this implementation only supports when false/absent."""
        v = self.cfg.get(name, False)
        if v not in (False, None):
            raise ValueError(f"{self.path}: {name}={v!r} is not supported "
                             f"(only encoder models without it)")


class Checkpoint:
    """Lazy access to the tensors of ``folder``'s safetensors file(s).

    Use as a context manager; the open shards are closed on exit.
    """

    def __init__(self, folder):
        from safetensors import safe_open   # optional dependency
        self._safe_open = safe_open
        self.folder = os.fspath(folder)
        single = os.path.join(self.folder, "model.safetensors")
        index = os.path.join(self.folder, "model.safetensors.index.json")
        self._handles = {}
        if os.path.isfile(single):
            self._files = {None: single}
            self._map = None
        elif os.path.isfile(index):
            self._map = self._read_index(index)
            self._files = {}
        else:
            others = [n for n in ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index")
                      if os.path.exists(os.path.join(self.folder, n))]
            hint = (f" (found {', '.join(others)}: only safetensors files are "
                    f"read, since pickled checkpoints can execute code; convert "
                    f"with transformers' save_pretrained(..., safe_serialization=True))"
                    if others else "")
            raise ValueError(f"no model.safetensors or model.safetensors.index.json "
                             f"in {self.folder!r}{hint}")
        self._keys = None

    def _read_index(self, index):
        check_json_file(index, "checkpoint index")
        try:
            with open(index, encoding="utf-8") as fh:
                data = json.load(fh)
        except JSON_ERRORS as e:
            raise ValueError(f"{index} could not be read as JSON: {e}") from None
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise ValueError(f"{index}: weight_map must be an object of tensor name -> "
                             f"shard file name")
        for shard in set(wm.values()):
            # a shard must be a plain file inside the folder (no paths)
            if not shard or os.path.basename(shard) != shard or shard in (".", ".."):
                raise ValueError(f"{index}: shard name {shard!r} is not a plain file "
                                 f"name inside the model folder")
        self._index_path = index
        return wm

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for h in self._handles.values():
            try:
                h.__exit__(None, None, None)
            except Exception:  # pragma: no cover - closing is best effort
                pass
        self._handles.clear()

    def _handle(self, shard):
        h = self._handles.get(shard)
        if h is None:
            path = self._files.get(shard) or os.path.join(self.folder, shard)
            if not os.path.isfile(path):
                raise ValueError(f"shard {path!r} listed in {self._index_path} is missing")
            try:
                h = self._safe_open(path, framework="numpy")
                h.__enter__()
            except Exception as e:
                raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
            self._files[shard] = path
            self._handles[shard] = h
        return h

    def _where(self, name):
        """(handle, file path) holding ``name``, or None."""
        if self._map is None:
            h = self._handle(None)
            if self._keys is None:
                self._keys = set(h.keys())
            return (h, self._files[None]) if name in self._keys else None
        shard = self._map.get(name)
        if shard is None:
            return None
        h = self._handle(shard)
        return h, self._files[shard]

    def names(self):
        """All tensor names (from the index, or the single file's header)."""
        if self._map is not None:
            return set(self._map)
        self._where("")
        return set(self._keys)

    def has(self, name):
        return name in self.names()

    def get(self, name, shape, dtype, aliases=()):
        """Tensor ``name`` (or the first of ``aliases`` present) as a
        C-contiguous ``dtype`` array of ``shape``; ``ValueError`` naming the
        tensor and file when absent, mis-shaped or not floating point."""
        found = None
        for n in (name,) + tuple(aliases):
            found = self._where(n)
            if found is not None:
                name = n
                break
        if found is None:
            where = self._index_path if self._map is not None else self._files[None]
            raise ValueError(f"tensor {name!r} is missing from {where}")
        h, path = found
        try:
            sl = h.get_slice(name)
        except Exception as e:   # the index names a tensor its shard lacks
            raise ValueError(f"tensor {name!r} is not in {path} ({e})") from None
        got = tuple(int(s) for s in sl.get_shape())
        if got != tuple(shape):
            raise ValueError(f"tensor {name!r} in {path} has shape {got}, expected "
                             f"{tuple(shape)} from config.json")
        code = sl.get_dtype()
        if code not in _FLOAT_CODES:
            raise ValueError(f"tensor {name!r} in {path} has dtype {code}, expected a "
                             f"floating-point tensor")
        try:
            a = h.get_tensor(name)
        except Exception as e:  # e.g. BF16 without ml_dtypes installed
            raise ValueError(f"tensor {name!r} in {path} ({code}) could not be read "
                             f"as a NumPy array: {e}") from None
        a = np.ascontiguousarray(a.astype(dtype, copy=False))
        if not np.isfinite(a).all():
            raise ValueError(f"tensor {name!r} in {path} holds NaN or infinite values")
        return a
