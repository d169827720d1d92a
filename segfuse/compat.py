"""Environment compatibility shims, each scoped to the one import that needs it."""
from __future__ import annotations

import contextlib
import importlib
import sys
import warnings

__all__ = ["import_timm"]


@contextlib.contextmanager
def _tolerate_missing_torchvision_ops():
    """Let ``import torchvision`` finish when its compiled ops failed to load.

    PyPI's Linux torchvision wheels are CUDA builds; next to a CPU torch their ``_C`` library cannot
    load, and torchvision then fails at import while registering fake kernels for the ops it lacks
    (``operator torchvision::nms does not exist``). Those registrations are skipped for the ops that
    do not exist; the ops stay unavailable, the pure-Python parts (all that timm needs) import.
    """
    import torch

    original = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            namespace, name = op.split("::", 1)
            if not hasattr(getattr(torch.ops, namespace), name.split(".")[0]):
                func = args[0] if args and callable(args[0]) else kwargs.get("func")
                return func if func is not None else (lambda fn: fn)
        return original(op, *args, **kwargs)

    torch.library.register_fake = tolerant
    try:
        yield
    finally:
        torch.library.register_fake = original


def import_timm():
    """``import timm``, working around a torchvision whose compiled ops cannot load (see above)."""
    try:
        return importlib.import_module("timm")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        reason = str(err)
    for name in [m for m in sys.modules if m == "timm" or m.startswith(("timm.", "torchvision"))]:
        del sys.modules[name]
    warnings.warn(f"torchvision's compiled ops did not load ({reason}); importing timm without them "
                  "(torchvision.ops such as nms are unavailable). Install a torchvision built for your torch "
                  "to silence this.", RuntimeWarning, stacklevel=2)
    with _tolerate_missing_torchvision_ops():
        importlib.import_module("torchvision")
    return importlib.import_module("timm")
