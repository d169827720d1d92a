"""segfuse.training: the training loop behind :func:`segfuse.train` and ``segfuse train``.

``train(**options)`` (:mod:`.api`) runs ``Trainer(TrainConfig(...)).fit()``, which trains and writes a
run folder (read back with :mod:`segfuse.runs`); :mod:`.config` holds ``TrainConfig``, the single source
of every option's default; :mod:`.factory` binds losses, optimiser groups and input size multiples.
"""
from .api import TrainResult, train
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["train", "TrainResult", "TrainConfig", "Trainer"]
