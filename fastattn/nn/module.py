"""Base class of fastattn's layers: parameters, state dicts, save/load.

A :class:`Module` owns NumPy arrays (its parameters) and child modules.
Names follow PyTorch's ``state_dict`` keys (``"self_attn.in_proj_weight"``,
``"layers.0.norm1.weight"``), so a converted torch state dict loads as is.
Layers are plain Python objects: they pickle with their weights.
"""
import copy

import numpy as np

from .. import weights

__all__ = ["Module", "resolve_dtype", "check_input"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype):
    """``None`` -> float32; float32 / float64 accepted; anything else raises."""
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt not in _FLOATS:
        raise TypeError(f"layer dtype must be float32 or float64, got {dt}")
    return dt


def check_input(x, name, dtype, last_dim=None, ndims=(2, 3)):
    """Return ``x`` as an ndarray after checking dtype, rank and last axis."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights "
                        f"are {dtype}; convert the input (x.astype) or the "
                        f"layer (layer.astype)")
    if x.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} "
                         f"dimensions, got shape {x.shape}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} has embedding size {x.shape[-1]} (shape "
                         f"{x.shape}), expected {last_dim}")
    return x


def _kaiming_uniform(rng, shape, fan_in, dtype):
    # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _xavier_uniform(rng, shape, dtype):
    fan_out, fan_in = shape
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Module:
    """Base of every layer: a tree of parameters (NumPy arrays).

    Subclasses register parameters with :meth:`_param` and children by
    assigning a :class:`Module` (or a list of them) to an attribute listed
    with :meth:`_child`.  Calling the module calls :meth:`forward`.
    """

    def __init__(self, dtype=None):
        self._params = []
        self._children = []
        self._dtype = resolve_dtype(dtype)

    # -- registration -----------------------------------------------------
    def _param(self, name, value):
        if value is not None:
            value = np.ascontiguousarray(value, dtype=self._dtype)
            if name not in self._params:
                self._params.append(name)
        elif name in self._params:
            self._params.remove(name)
        object.__setattr__(self, name, value)

    def _child(self, name, module):
        if name not in self._children:
            self._children.append(name)
        object.__setattr__(self, name, module)

    # -- tree -------------------------------------------------------------
    def _direct_children(self):
        """Yield ``(name, module)`` for the direct children; list members are
        named ``"cname.i"``, absent (None) children are skipped."""
        for cname in self._children:
            child = getattr(self, cname)
            if child is None:
                continue
            if isinstance(child, (list, tuple)):
                for i, m in enumerate(child):
                    yield f"{cname}.{i}", m
            else:
                yield cname, child

    def named_modules(self, prefix=""):
        """Yield ``(name, module)`` for this module and every descendant."""
        yield prefix, self
        for name, child in self._direct_children():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self):
        """Yield ``(dotted_name, array)`` in registration order."""
        for prefix, m in self.named_modules():
            for p in m._params:
                yield prefix + p, getattr(m, p)

    def state_dict(self):
        """All parameters as a plain ``{name: ndarray}`` dict (no copies)."""
        return dict(self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from ``{name: array}`` into this module.

        Arrays are converted to the layer's dtype.  With ``strict`` (the
        default) missing and unexpected names raise ``KeyError``; a shape
        mismatch always raises ``ValueError`` naming the tensor and both
        shapes.  Nothing is changed unless every tensor checks out.

        Returns
        -------
        self
        """
        own = {}
        for prefix, m in self.named_modules():
            for p in m._params:
                own[prefix + p] = (m, p)
        missing = [k for k in own if k not in state_dict]
        extra = [k for k in state_dict if k not in own]
        if strict and (missing or extra):
            parts = []
            if missing:
                parts.append(f"missing tensors: {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected tensors: {', '.join(extra)}")
            raise KeyError(f"state dict does not match {type(self).__name__}: "
                           + "; ".join(parts))
        staged = []
        for name, (m, p) in own.items():
            if name not in state_dict:
                continue
            arr = np.asarray(state_dict[name])
            cur = getattr(m, p)
            if arr.shape != cur.shape:
                raise ValueError(f"tensor {name!r} has shape {arr.shape} but "
                                 f"the layer expects {cur.shape}")
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"tensor {name!r} has dtype {arr.dtype}; "
                                "expected a floating-point array")
            staged.append((m, p, arr))
        for m, p, arr in staged:
            object.__setattr__(m, p, np.array(arr, dtype=self._dtype, order="C"))
        return self

    # -- dtype --------------------------------------------------------------
    @property
    def dtype(self):
        """The dtype of every parameter (float32 or float64)."""
        return self._dtype

    def astype(self, dtype):
        """Convert every parameter (and child) to ``dtype`` in place; returns
        ``self``."""
        dt = resolve_dtype(dtype)
        for _, m in self.named_modules():
            m._dtype = dt
            for p in m._params:
                object.__setattr__(m, p, np.ascontiguousarray(getattr(m, p), dtype=dt))
            m._on_dtype_change()
        return self

    def _on_dtype_change(self):
        """Hook for modules holding derived arrays (caches of weights)."""

    def copy(self):
        """A deep copy (weights included)."""
        return copy.deepcopy(self)

    # -- files ------------------------------------------------------------
    def save(self, path, metadata=None):
        """Write the parameters to ``path`` (``.safetensors`` or ``.npz``).

        See :func:`fastattn.weights.save`.
        """
        meta = {"fastattn.class": type(self).__name__}
        if metadata:
            meta.update(metadata)
        weights.save(self.state_dict(), path, metadata=meta)

    def load(self, path, strict=True):
        """Load parameters written by :meth:`save` (or any safetensors/.npz
        file with the same names); returns ``self``.  Never executes code."""
        return self.load_state_dict(weights.load(path), strict=strict)

    # -- calling ----------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        kids = []
        for name, child in self._direct_children():
            kids.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        if not kids:
            return lines[0] + ")"
        return lines[0] + "\n" + "\n".join(kids) + "\n)"
