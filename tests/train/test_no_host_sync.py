"""A training step of ``segfuse train`` on the fused loss path reads nothing back to the host after the first
step (issue 12): no ``.item()`` / ``float()`` / ``.tolist()`` on the loss's validation counters or on the loss.

On a CPU run everything is host memory, so the counter counts the reads that a GPU step would turn into
device->host copies: ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``bool()``, ``int()``), copies to
the CPU from another device, and ``Tensor.tolist`` / ``numpy`` / ``__array__`` (which read a CPU tensor's
memory without dispatching). Two things are excluded: the optimizer's step counters (host tensors on CUDA
too, read by AdamW on the host) and whatever triton's interpreter does while it runs a kernel (its host
staging, which a GPU launch never makes).
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from segfuse.bench.traffic import InsideInterpreterKernel
from segfuse.kernels import force_backend
from segfuse.training import TrainConfig, Trainer


class HostReads(TorchDispatchMode):
    """Count host reads of tensor data (see the module doc); ``reads`` lists ``(what, shape)``."""

    _PATCHED = ("tolist", "numpy", "__array__")

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.reads = []
        self._kernel = InsideInterpreterKernel()

    def _note(self, what, t):
        if not self._kernel.active and t.untyped_storage().data_ptr() not in self.exclude:
            self.reads.append((what, tuple(t.shape)))

    def __enter__(self):
        me = self
        self._saved = {name: getattr(torch.Tensor, name) for name in self._PATCHED}
        for name, fn in self._saved.items():
            def wrapped(t, *a, _fn=fn, _name=name, **k):
                me._note(_name, t)
                return _fn(t, *a, **k)
            setattr(torch.Tensor, name, wrapped)
        self._kernel.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, fn)
        self._kernel.__exit__(*exc)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self._note("item", args[0])
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst_cpu = (args[0].device.type == "cpu") if func is torch.ops.aten.copy_.default else \
                (torch.device(kwargs.get("device") or src.device).type == "cpu")
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_cpu:
                self._note("copy to host", src)
        return func(*args, **kwargs)


def _trainer(data, run_dir, **kw):
    cfg = dict(model="unet", model_kwargs=dict(channels=(8, 16, 32, 64)), data=data, run_dir=str(run_dir), dims=2,
               supervision="lomix", iterations=3, iters_per_epoch=3, batch_size=2, patch_size=(32, 32), progress=False,
               seed=3, augment="default", val_split="none")
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg))


def _step_counters(opt):
    return [st["step"] for st in opt.state.values() if isinstance(st.get("step"), torch.Tensor)]


def test_fused_training_step_reads_nothing_back_after_the_first(tiny_data, tmp_path):
    """A U-Net with 3 deep-supervision maps (strides 4, 2, 1) + LoMix (19 supervised maps) on the Triton path
    (interpreter): the first step validates the labels and logits (one read of the counters, where a fault
    would be reported with the map and the count); the second step reads nothing back."""
    with force_backend("triton"):
        tr = _trainer(tiny_data, tmp_path / "run")
        x, y = next(iter(tr._loader(0)))
        with HostReads() as first:
            loss1 = tr.train_step(x, y)
        with HostReads(exclude=_step_counters(tr.opt)) as second:
            loss2 = tr.train_step(x, y)
    assert tr.num_maps == 3
    assert first.reads, "the counter must see the first step's validation read"
    assert second.reads == [], f"host reads in a training step after the first: {second.reads}"
    assert loss1.dim() == 0 and loss2.dim() == 0 and torch.isfinite(loss1) and torch.isfinite(loss2)


def test_the_counter_sees_item_and_tolist():
    t = torch.ones(3)
    with HostReads() as c:
        t.sum().item()
        t.tolist()
        float(t[0])
    assert [w for w, _ in c.reads] == ["item", "tolist", "item"]
