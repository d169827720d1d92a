"""segfuse: fused Triton kernels, models and losses for medical image segmentation.

Python API (each also a command: ``segfuse train | predict | evaluate``)::

    import segfuse
    result = segfuse.train(model="lgmsnet", data="mni152", spacing=(2, 2, 2), iterations=80, run_dir="runs/mni")
    segfuse.predict(result.run_dir, "DATASET/imagesTs", "preds")
    segfuse.evaluate(result.run_dir).summary

``segfuse.train`` (:func:`segfuse.training.train`), ``segfuse.predict`` (:func:`segfuse.prediction.predict`)
and ``segfuse.evaluate`` (:func:`segfuse.evaluation.evaluate`) are imported on first use, so ``import
segfuse`` stays light; :class:`segfuse.runs.Run` opens a run folder. Subpackages: ``segfuse.kernels``
(ops), ``segfuse.losses``, ``segfuse.models``, ``segfuse.bench``, ``segfuse.data``.
"""
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["train", "predict", "evaluate", "__version__"]

if TYPE_CHECKING:
    from .evaluation import evaluate
    from .prediction import predict
    from .training.api import train


def __getattr__(name: str):
    """``segfuse.train`` / ``predict`` / ``evaluate``: the function, imported on first access."""
    if name == "train":
        from .training.api import train as fn
    elif name == "predict":
        from .prediction import predict as fn
    elif name == "evaluate":
        from .evaluation import evaluate as fn
    else:
        raise AttributeError(f"module 'segfuse' has no attribute {name!r}")
    globals()[name] = fn
    return fn


def __dir__():
    return sorted(set(globals()) | set(__all__))
