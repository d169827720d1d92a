"""The training loop behind :func:`segfuse.train` and ``segfuse train``.

``Trainer(cfg).fit()`` trains ``cfg.model`` on ``cfg.data`` and writes, on rank 0 only, a run folder:
``config.json``, ``metrics.csv`` (one row per epoch), ``last.pt`` (every epoch and at the end) and
``best.pt`` (best validation Dice), ``curves.png`` and, for LoMix, ``lomix_weights.png``. Files are
written atomically, with the process umask. ``fit()`` holds an OS lock on ``RUN_DIR/.lock`` (PID inside)
so a second run on the same folder is refused; temporaries of a killed write are removed at start.
Sampling is a deterministic function of (seed, epoch, sample index), so an iteration-budgeted run
resumed from ``last.pt`` reproduces an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import sys
import time
import warnings
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from segfuse.data import NnUNetDataset, resolve_data
from segfuse.data.augment import AugmentConfig
from segfuse.data.errors import CheckpointError, MissingFileError, RunFolderExists
from segfuse.data.preprocess import Preprocess
from segfuse.data.sampling import PatchDataset
from segfuse.data.split import load_volumes, resolve_split, split_data
from segfuse.inference import predict_volume
from segfuse.metrics import dice_score, nanmean, scored_mask
from segfuse.models import create_model
from segfuse.runs import DEEP_SUPERVISIONS
from segfuse.runs.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint, write_csv, write_json

from . import distributed as D
from .config import TrainConfig
from .factory import build_loss, loss_weights, optimizer_groups, size_multiple
from .runlock import acquire_run_lock


def _amp_dtype(amp: str, device: torch.device):
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


class _Joint(nn.Module):
    """Model + loss in one module, so DDP also all-reduces the loss's learnable (LoMix) weights."""

    def __init__(self, model, loss_module, loss_fn):
        super().__init__()
        self.model, self.loss_module = model, loss_module
        self._loss_fn = loss_fn

    def forward(self, x, y):
        return self._loss_fn(self.model(x), y)


class Trainer:
    """One training run of a :class:`TrainConfig`: data, model, loss and optimiser are set up on
    construction; :meth:`fit` trains and writes the run folder."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg                     # TrainConfig checked its choices (dims, optimizer, schedule, ...)
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.rank, self.world, local = D.init_distributed(torch.device(dev).type)
        self.device = torch.device(f"cuda:{local}" if dev == "cuda" and self.world > 1 else dev)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self._seed_all(cfg.seed)
        self._setup_data()
        self._setup_model()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _seed_all(seed):
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    def _setup_data(self):
        cfg = self.cfg
        folder = resolve_data(cfg.data, cfg.cache_dir) if self.main else None
        D.barrier()
        if not self.main:
            folder = resolve_data(cfg.data, cfg.cache_dir)
        self.data_dir = os.path.abspath(folder)
        ds = self.ds = NnUNetDataset(folder)
        self.pre = Preprocess(ds.channel_names, tuple(cfg.ct_window), cfg.spacing)
        ids = ds.case_ids("Tr")
        if not ids:
            raise ValueError(f"--data {cfg.data!r}: {folder}/labelsTr holds no cases")
        self.split = resolve_split(cfg.val_split, cfg.dims, len(ids), cfg.holdout_every)
        vols = load_volumes(ds, ids, self.pre)
        self.train_items, self.val_volumes = split_data(vols, cfg.dims, self.split, cfg.holdout_every,
                                                        ignore_label=ds.ignore_label)

    def _setup_model(self):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        ds = self.ds
        deep = cfg.supervision in DEEP_SUPERVISIONS
        self.model = create_model(cfg.model, cfg.dims, len(ds.channel_names), ds.num_classes,
                                  deep_supervision=deep, **cfg.model_kwargs).to(self.device)
        div = size_multiple(self.model)
        if cfg.patch_size:
            patch = tuple(int(p) for p in cfg.patch_size)
            if len(patch) != cfg.dims:
                raise ValueError(f"--patch-size {patch} needs {cfg.dims} values for --dims {cfg.dims}")
            if any(p % div for p in patch):
                raise ValueError(f"--patch-size {patch}: every entry must be a multiple of {div} "
                                 f"for model {cfg.model!r}")
        else:
            shape = self.train_items[0][1].shape
            cap = 256 if cfg.dims == 2 else 96
            patch = tuple(min(cap, int(math.ceil(s / div) * div)) for s in shape)
        self.patch = patch
        self.num_maps = self._count_maps() if deep else 1
        self.loss_fn, self.loss_module = build_loss(cfg.supervision, self.num_maps, ds.num_classes, cfg.dims,
                                                    model=self.model, dice_ce=cfg.dice_ce,
                                                    ignore_index=ds.ignore_label)
        self.loss_module.to(self.device)
        self.joint = _Joint(self.model, self.loss_module, self.loss_fn)
        self.ddp = self.joint
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = optimizer_groups(self.model, self.loss_module, cfg.transformer_lr_scale)
        lr = cfg.lr or (2e-3 if cfg.optimizer == "adamw" else 1e-2)
        self.base_lr = lr
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True,
                                       weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.total_iters = cfg.iterations or cfg.epochs * cfg.iters_per_epoch
        self.dataset = PatchDataset(self.train_items, patch, cfg.iters_per_epoch * cfg.batch_size * self.world,
                                    seed=cfg.seed, fg_prob=cfg.fg_prob, aug=AugmentConfig.preset(cfg.augment),
                                    ignore_label=ds.ignore_label)
        self.epoch, self.iteration, self.elapsed, self.best = 0, 0, 0.0, -1.0
        self.history: List[Dict] = []

    def _count_maps(self) -> int:
        strides = getattr(self.model, "output_strides", None)
        if strides:
            return len(strides)
        self.model.train()
        with torch.no_grad():
            out = self.model(torch.zeros((1, len(self.ds.channel_names)) + self.patch, device=self.device))
        return len(out) if isinstance(out, (list, tuple)) else 1

    # ------------------------------------------------------------------ state
    def state(self) -> Dict:
        return {"model": self.model.state_dict(), "loss": self.loss_module.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "iteration": self.iteration, "elapsed": self.elapsed,
                "best": self.best, "history": self.history, "torch_rng": torch.get_rng_state(),
                "config": self.run_config()}

    def load_state(self, st: Dict) -> None:
        self.model.load_state_dict(st["model"])
        self.loss_module.load_state_dict(st["loss"])
        scales = [g["lr_scale"] for g in self.opt.param_groups]  # this run's groups: a changed scale applies
        self.opt.load_state_dict(st["optimizer"])
        for g, scale in zip(self.opt.param_groups, scales):
            g["lr_scale"] = scale
        self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.iteration = st["epoch"], st["iteration"]
        self.elapsed, self.best, self.history = st["elapsed"], st["best"], list(st["history"])
        torch.set_rng_state(st["torch_rng"])

    def run_config(self) -> Dict:
        c = dataclasses.asdict(self.cfg)
        c.update(data_dir=self.data_dir, num_classes=self.ds.num_classes, class_names=self.ds.class_names,
                 ignore_label=self.ds.ignore_label,
                 channel_names=self.ds.channel_names, patch_size=list(self.patch), val_split_resolved=self.split,
                 num_maps=self.num_maps, world_size=self.world,
                 size_multiple=size_multiple(self.model))
        return c

    # ------------------------------------------------------------------ loop
    def lr_at(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        if self.cfg.schedule == "poly":
            return self.base_lr * (1.0 - progress) ** 0.9
        if self.cfg.schedule == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr

    def progress(self) -> float:
        p = self.iteration / self.total_iters
        if self.cfg.max_minutes:
            p = max(p, self.elapsed / (60.0 * self.cfg.max_minutes))
        return p

    def _loader(self, skip_batches: int):
        sampler = (torch.utils.data.DistributedSampler(self.dataset, self.world, self.rank, shuffle=True,
                                                       seed=self.cfg.seed, drop_last=True)
                   if self.world > 1 else None)
        if sampler is not None:
            sampler.set_epoch(self.epoch)
        indices = list(sampler) if sampler is not None else list(range(len(self.dataset)))
        indices = indices[skip_batches * self.cfg.batch_size:]
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=indices,
                                           num_workers=self.cfg.num_workers, drop_last=True,
                                           persistent_workers=False)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch ``x [N, C, *P]``, ``y [N, *P]``; returns the loss as a detached
        0-d tensor on the device (reading it would stall the GPU pipeline every step: the epoch reads the
        mean once)."""
        self.joint.train()
        lr = self.lr_at(self.progress())
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # checkpoints from before the groups lack it
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            loss = self.ddp(x, y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        nn.utils.clip_grad_norm_(self.joint.parameters(), 12.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.iteration += 1
        return loss.detach()

    def validate(self) -> Dict[str, float]:
        """Mean Dice per foreground class over the validation volumes (+ ``val_dice_mean``), in the training
        grid; voxels of the ignore label count for no class."""
        if not self.val_volumes:
            return {}
        per_class = {c: [] for c in range(1, self.ds.num_classes)}
        for v in self.val_volumes:
            probs = predict_volume(self.model, v.image, self.cfg.dims, self.patch, self.ds.num_classes,
                                   overlap=0.5 if self.cfg.dims == 3 else 0.25, device=self.device,
                                   amp_dtype=self.amp_dtype)
            pred = probs.argmax(0)
            mask = scored_mask(v.label, self.ds.ignore_label)
            for c in per_class:
                per_class[c].append(dice_score(pred == c, v.label == c, mask))
        out = {f"val_dice_{self.ds.class_names[c]}": nanmean(d) for c, d in per_class.items()}
        out["val_dice_mean"] = nanmean(out.values())
        return out

    def _write_run_files(self, checkpoint=True):
        rd = self.cfg.run_dir
        if checkpoint:
            save_checkpoint(self.state(), os.path.join(rd, "last.pt"))
        write_csv(self.history, os.path.join(rd, "metrics.csv"))
        from .plots import plot_history
        plot_history(self.history, rd)

    def _resume_state(self, last: str):
        """(state, path) of ``last.pt``; if it is damaged and ``best.pt`` is intact, ``best.pt``'s with a warning
        (the damaged file is kept as ``last.pt.damaged``); if both are unusable, CheckpointError."""
        try:
            return load_checkpoint(last, map_location=self.device), last
        except CheckpointError as e:
            best = os.path.join(os.path.dirname(last), "best.pt")
            if not os.path.isfile(best):
                raise CheckpointError(f"--resume: {e}; there is no best.pt to fall back to, start a new "
                                      "run (another --run-dir)") from e
            try:
                st = load_checkpoint(best, map_location=self.device)
            except CheckpointError as e2:
                raise CheckpointError(f"--resume: {e}; and the fallback {e2}") from e
            if self.main:
                shutil.copyfile(last, last + ".damaged")
                warnings.warn(f"--resume: {e}; continuing from the intact {best} "
                              f"(epoch {st['epoch']}, iteration {st['iteration']}); the damaged file is kept "
                              f"as {last}.damaged", UserWarning, stacklevel=3)
            return st, best

    def fit(self) -> Dict:
        """Train to the end of the budget; returns the last metrics row. The run folder is locked
        (``RUN_DIR/.lock``) for the whole call on rank 0; a second run on it gets RunFolderBusy."""
        lock = acquire_run_lock(self.cfg.run_dir) if self.main else None
        try:
            if self.main:
                remove_stale_temp_files(self.cfg.run_dir)
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> Dict:
        cfg = self.cfg
        rd = cfg.run_dir
        last = os.path.join(rd, "last.pt")
        if cfg.resume:
            if not os.path.isfile(last):
                raise MissingFileError(f"--resume: no checkpoint {last}")
            state, source = self._resume_state(last)
            self.load_state(state)
            if self.main:
                print(f"resumed from {source} at epoch {self.epoch}, iteration {self.iteration}", flush=True)
        elif self.main and os.path.isfile(last):
            raise RunFolderExists(f"{rd} already holds a run (last.pt); pass --resume to continue it or "
                                  "choose another --run-dir")
        if self.main:
            os.makedirs(rd, exist_ok=True)
            write_json(self.run_config(), os.path.join(rd, "config.json"))
        stop = self.iteration >= self.total_iters or self.progress() >= 1.0
        t_start = time.time() - self.elapsed
        epochs_here = 0
        while not stop:
            done_in_epoch = self.iteration - self.epoch * cfg.iters_per_epoch
            self.dataset.set_epoch(self.epoch)
            loader = self._loader(done_in_epoch)
            bar = None
            if self.main and cfg.progress and sys.stderr.isatty():  # in a log file: only the per-epoch line
                from tqdm import tqdm
                bar = tqdm(total=cfg.iters_per_epoch, initial=done_in_epoch, desc=f"epoch {self.epoch}",
                           leave=False, file=sys.stderr, dynamic_ncols=True)
            losses, t0, n_samples = [], time.time(), 0
            for x, y in loader:
                losses.append(self.train_step(x, y))
                n_samples += x.shape[0] * self.world
                self.elapsed = time.time() - t_start
                if bar is not None:
                    bar.update(1)
                    if len(losses) % 10 == 1:  # reading the loss syncs with the device: every 10 steps, a terminal only
                        bar.set_postfix(loss=f"{float(torch.stack(losses[-20:]).float().mean()):.4f}",
                                        img_s=f"{n_samples / max(time.time() - t0, 1e-9):.1f}")
                budget_hit = self.iteration >= self.total_iters or self.progress() >= 1.0
                if cfg.max_minutes:
                    budget_hit = D.any_rank(budget_hit, self.device)
                if budget_hit:
                    stop = True
                    break
            if bar is not None:
                bar.close()
            epoch_done = self.iteration - self.epoch * cfg.iters_per_epoch >= cfg.iters_per_epoch
            row = {"epoch": self.epoch + 1 if epoch_done else self.epoch + len(losses) / cfg.iters_per_epoch,
                   "iteration": self.iteration, "time_s": round(self.elapsed, 2),
                   "lr": self.opt.param_groups[0]["lr"],
                   "train_loss": D.all_reduce_mean(float(torch.stack(losses).float().mean()) if losses else float("nan"),
                                                   self.device),
                   "samples_per_s": n_samples / max(time.time() - t0, 1e-9)}
            if epoch_done:
                self.epoch += 1
                epochs_here += 1
                if cfg.stop_after_epochs and epochs_here >= cfg.stop_after_epochs:
                    stop = True
            do_val = stop or (self.epoch % max(cfg.val_every, 1) == 0)
            if do_val and self.main:
                row.update(self.validate())
            row.update({f"w_{k}": v for k, v in loss_weights(self.loss_module).items()})
            self.history.append(row)
            if self.main:
                msg = (f"epoch {row['epoch']:.2f} it {self.iteration} loss {row['train_loss']:.4f} "
                       f"{row['samples_per_s']:.1f} img/s")
                if "val_dice_mean" in row:
                    msg += f" val Dice {row['val_dice_mean']:.4f}"
                print(msg, flush=True)
                if row.get("val_dice_mean", -1.0) > self.best:
                    self.best = row["val_dice_mean"]
                    save_checkpoint(self.state(), os.path.join(rd, "best.pt"))
                self._write_run_files()
            D.barrier()
        if self.main and not self.history:
            self._write_run_files()
        return self.history[-1] if self.history else {}
