"""Distillation divergences; the gradient is w.r.t. the student logits.

``divergence(student_logits, teacher_logits, mask=None, *, divergence="forward_kl",
temperature=1.0, temperature_squared=False, beta=0.5, alpha=0.1,
preset=None|"hinton"|"trl"|"liger"|"distillm", <normaliser>, out=None, ...)``:
``divergence`` is any name ``parse_divergence`` accepts (``DIVERGENCE_NAMES``). Logits are
``[N, V]`` or ``[B, T, V]``; ``mask`` is the ``[B, T]`` row mask (B·T = N; 0 excludes a row);
without a mask every row counts (token mean over rows). The gradient has the logits' shape.
"""

from . import _rlpo
from ._common import as_array, wrap

DIVERGENCE_NAMES = list(_rlpo.distill.DIVERGENCE_NAMES)
_divergence = wrap(_rlpo.distill.divergence, "distill.divergence",
                   ("student_logits", "teacher_logits", "mask"))


def divergence(student_logits, teacher_logits, mask=None, **kwargs):
    fn = "distill.divergence"
    z = as_array(student_logits, "student_logits", fn)
    y = as_array(teacher_logits, "teacher_logits", fn)
    out = kwargs.get("out")
    shape = getattr(z, "shape", None)
    if shape is not None and len(shape) == 3:  # [B, T, V]: rows B·T, mask [B, T]
        B, T, V = shape
        if getattr(y, "shape", None) != shape:
            raise ValueError(f"rlpo.{fn}: teacher_logits: expected shape {tuple(shape)} "
                             f"(same as student_logits), given {tuple(getattr(y, 'shape', ()))}")
        z, y = _rows(z, "student_logits", fn), _rows(y, "teacher_logits", fn)
        if mask is None:
            import numpy as np
            mask = np.ones((B, T), dtype=z.dtype)
        if out is not None:
            kwargs["out"] = _rows(as_array(out, "out", fn), "out", fn)
        r = _divergence(z, y, mask, **kwargs)
        if out is not None:
            r.grad = out
        elif r.grad is not None:
            r.grad = r.grad.reshape(shape)
        return r
    r = _divergence(z, y, mask, **kwargs)
    return r


def _rows(a, name, fn):
    """[B, T, V] → [B·T, V] without a copy (C-contiguous only)."""
    if getattr(a, "ndim", 0) != 3:
        raise ValueError(f"rlpo.{fn}: {name}: expected a 3-D array like student_logits")
    if not a.flags["C_CONTIGUOUS"]:
        raise ValueError(f"rlpo.{fn}: {name}: must be C-contiguous (rlpo reads it in place)")
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])
