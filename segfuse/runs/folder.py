"""A run folder written by ``segfuse train`` / :func:`segfuse.train`, opened as a :class:`Run`.

The folder holds ``config.json`` (every training option plus what the data fixed: ``data_dir``,
``num_classes``, ``class_names``, ``ignore_label``, ``channel_names``, ``patch_size``, ``val_split_resolved``, ...),
``last.pt`` and ``best.pt`` (checkpoints whose ``"model"`` entry is the model's state dict) and
``metrics.csv``. ``Run`` rebuilds from it what predict, evaluate and a notebook need: the model (with
its weights), the preprocessing, the dataset and the validation split used in training.

Example::

    run = Run("runs/mni152")
    model = run.load_model("best", device="cpu")
    image, _, spacing = run.preprocess()(case.image, None, case.spacing)
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Union

from segfuse.data.errors import DataError, MissingFileError

from .checkpoint import load_checkpoint

SUPERVISIONS = ("single", "deep", "lomix", "fias")
DEEP_SUPERVISIONS = ("deep", "lomix", "fias")  # the modes whose model returns every deep-supervision map
CHECKPOINTS = ("last", "best")


def read_config(folder: str) -> Dict:
    """``FOLDER/config.json`` as a dict; MissingFileError / DataError (naming the file) when absent or damaged."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise MissingFileError(f"run folder {folder!r}: {path} not found (not a folder written by segfuse train)")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"run folder {folder!r}: {path} is damaged (not valid JSON): {e}") from e


class Run:
    """A trained run folder: its config (``run.config``, a dict), model, preprocessing and checkpoints.

    Args:
        folder: the ``--run-dir`` of a training run.
    """

    def __init__(self, folder: Union[str, os.PathLike]):
        self.folder = os.fspath(folder)
        self.config = read_config(self.folder)

    def __repr__(self) -> str:
        c = self.config
        return f"Run({self.folder!r}: {c['model']} {c['dims']}D, {c['num_classes']} classes)"

    @property
    def dims(self) -> int:
        """2 (slice-wise model) or 3."""
        return int(self.config["dims"])

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return int(self.config["num_classes"])

    @property
    def class_names(self) -> List[str]:
        return list(self.config["class_names"])

    @property
    def ignore_label(self) -> Optional[int]:
        """The dataset's ignore label (not a class; its voxels are not scored), None without one."""
        value = self.config.get("ignore_label")
        return None if value is None else int(value)

    @property
    def patch_size(self) -> List[int]:
        """The training patch: the sliding window of prediction."""
        return [int(p) for p in self.config["patch_size"]]

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> Dict[str, str]:
        """``{name: path}`` of the checkpoints present (``last``, ``best``)."""
        paths = {name: os.path.join(self.folder, f"{name}.pt") for name in CHECKPOINTS}
        return {name: path for name, path in paths.items() if os.path.isfile(path)}

    def checkpoint_path(self, checkpoint: str = "last") -> str:
        """``"last"`` | ``"best"`` | a path to a ``.pt`` file -> the file's path."""
        checkpoint = os.fspath(checkpoint)
        return checkpoint if checkpoint.endswith(".pt") else os.path.join(self.folder, f"{checkpoint}.pt")

    def load_checkpoint(self, checkpoint: str = "last", map_location="cpu") -> Dict:
        """The checkpoint's state dict (MissingFileError / CheckpointError naming the file)."""
        return load_checkpoint(self.checkpoint_path(checkpoint), map_location=map_location)

    # ------------------------------------------------------------------ model, preprocessing, data
    def build_model(self):
        """The run's network, untrained, built with the run's model options (``segfuse.models.create_model``)."""
        from segfuse.models import create_model
        c = self.config
        return create_model(c["model"], self.dims, len(c["channel_names"]), self.num_classes,
                            deep_supervision=c["supervision"] in DEEP_SUPERVISIONS, **c.get("model_kwargs", {}))

    def load_model(self, checkpoint: str = "last", device="cpu"):
        """The network with the weights of ``checkpoint`` (see :meth:`checkpoint_path`), on ``device``, in eval mode."""
        state = self.load_checkpoint(checkpoint, map_location=device)
        model = self.build_model()
        model.load_state_dict(state["model"])
        return model.to(device).eval()

    def preprocess(self):
        """The run's :class:`segfuse.data.preprocess.Preprocess` (channels, CT window, spacing)."""
        from segfuse.data.preprocess import Preprocess
        c = self.config
        return Preprocess(c["channel_names"], tuple(c["ct_window"]), c.get("spacing"))

    def dataset(self):
        """The training data (``config["data_dir"]``) as an :class:`segfuse.data.NnUNetDataset`."""
        from segfuse.data import NnUNetDataset
        return NnUNetDataset(self.config["data_dir"])

    def validation_volumes(self):
        """The validation cases (or held-out slices) of training, preprocessed: a list of
        :class:`segfuse.data.sampling.Volume`. ValueError if the run was trained without a validation split."""
        from segfuse.data.split import load_volumes, split_data
        split = self._validation_split()
        ds = self.dataset()
        volumes = load_volumes(ds, ds.case_ids("Tr"), self.preprocess())
        return split_data(volumes, self.dims, split, self.config["holdout_every"], ignore_label=ds.ignore_label)[1]

    def validation_cases(self):
        """The validation split of training in the images' own grid, case by case: an iterator of
        :class:`segfuse.data.split.HeldOutCase` (the raw case, its preprocessed image, the held-out slices of a
        ``slices`` split). ValueError if the run was trained without a validation split."""
        from segfuse.data.split import held_out_cases
        return held_out_cases(self.dataset(), self.preprocess(), self._validation_split(),
                              self.config["holdout_every"])

    def _validation_split(self) -> str:
        """The validation split training resolved ("cases" or "slices"); ValueError if it had none."""
        split = self.config["val_split_resolved"]
        if split == "none":
            raise ValueError(f"run {self.folder} was trained without a validation split")
        return split


def as_run(run: Union[str, os.PathLike, Run]) -> Run:
    """``run`` itself if it is a :class:`Run`, else the run folder at that path opened."""
    return run if isinstance(run, Run) else Run(run)
