"""Checks shared by the encoder and decoder loaders against hostile folders.

Kept apart from the loaders (``_encoder_files``, ``_checkpoint``, the model
modules), which call these at a few fixed points:

* :func:`check_json_file` before a JSON file is parsed: a config file larger
  than :data:`MAX_JSON_BYTES` is refused (no model config comes near it),
  and :data:`JSON_ERRORS` lists what parsing a hostile file can raise
  (``RecursionError`` for deeply nested arrays) so that it becomes a
  ``ValueError`` naming the file.
* :func:`check_weight_budget` right after the config's sizes are parsed and
  before anything is allocated from them: the weights the sizes imply must
  fit in the checkpoint files on disk (at 2 bytes per weight, the smallest
  float the loaders accept), so an absurd ``hidden_size``, layer count or
  vocabulary is a ``ValueError`` naming the fields instead of a
  multi-terabyte allocation or a minutes-long loop.
"""
import json
import os

__all__ = ["MAX_JSON_BYTES", "MAX_LAYERS", "JSON_ERRORS", "check_json_file",
           "checkpoint_bytes", "check_weight_budget"]

#: Largest config / index / modules JSON file read (real ones are < 1 MiB).
MAX_JSON_BYTES = 16 << 20
#: More layers than any checkpoint has (the deepest released models have
#: a few hundred); checked even when the weight files cannot be measured.
MAX_LAYERS = 1 << 16
#: What json.load raises on a hostile file.
JSON_ERRORS = (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError)


def check_json_file(path, what, limit=MAX_JSON_BYTES):
    """``ValueError`` naming ``path`` when the file is larger than ``limit``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return              # the caller's open() reports it
    if size > limit:
        raise ValueError(f"{what} {path} is {size:,} bytes, more than any model's "
                         f"(limit {limit:,} bytes): refusing to parse it")


def checkpoint_bytes(folder):
    """Bytes of the safetensors weight files of ``folder``
    (``model.safetensors``, or the distinct existing shards named by
    ``model.safetensors.index.json``); None when there are none, or the
    index is unreadable, or the file is too short for its own header (the
    loader then reports the problem itself)."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        size = os.path.getsize(single)
        try:     # a file whose header does not fit is the loader's to report
            with open(single, "rb") as fh:
                head = int.from_bytes(fh.read(8), "little")
        except OSError:
            return None
        return size if size >= 8 + head else None
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.isfile(index):
        return None
    try:
        check_json_file(index, "checkpoint index")
        with open(index, encoding="utf-8") as fh:
            wm = json.load(fh).get("weight_map")
        shards = {s for s in wm.values() if isinstance(s, str)
                  and s and os.path.basename(s) == s and s not in (".", "..")}
    except (ValueError, AttributeError, TypeError) + JSON_ERRORS:
        return None
    total = 0
    for s in shards:
        p = os.path.join(folder, s)
        if os.path.isfile(p):
            total += os.path.getsize(p)
    return total


def check_weight_budget(config_path, folder, n_weights, fields, layers=None):
    """Refuse sizes that the checkpoint cannot hold, before allocating.

    ``n_weights``: a lower bound (a Python int, no overflow) of the weights
    the config's sizes imply (the weight matrices every layer must have);
    ``fields``: ``{name: value}`` of the config fields it was computed from
    (named in the error); ``layers``: ``(name, value)`` of the layer count.
    """
    desc = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    if layers is not None and layers[1] > MAX_LAYERS:
        raise ValueError(f"{config_path}: {layers[0]}={layers[1]!r} is more layers than any "
                         f"checkpoint has (limit {MAX_LAYERS})")
    have = checkpoint_bytes(folder)
    if have is None:
        return
    need = 2 * int(n_weights)
    if need > have:
        files = ("model.safetensors" if os.path.isfile(os.path.join(folder, "model.safetensors"))
                 else "the shards of model.safetensors.index.json")
        raise ValueError(f"{config_path}: the sizes {desc} imply at least {n_weights:,} "
                         f"weights ({need:,} bytes even as 16-bit floats), but {files} "
                         f"in {folder} hold(s) only {have:,} bytes: config.json does not "
                         f"describe these weights")
