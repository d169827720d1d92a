"""segfuse.train: the training loop behind ``segfuse train``.

``Trainer(TrainConfig(...)).fit()`` trains and writes a run folder; ``factory.build_model`` /
``factory.build_loss`` bind models and losses; ``unet.UNet`` is the plain baseline.
"""
from .trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
