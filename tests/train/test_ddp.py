"""DistributedDataParallel with gloo on CPU: 2 processes, different samples, identical weights after a step."""
import os
import socket

import torch
import pytest
import torch.multiprocessing as mp

# (model, dims, patch, model options): a plain U-Net, and MaskMed (own set criterion, two learning-rate groups)
MODELS = {
    "unet": ("unet", 2, (32, 32), {}),
    "maskmed": ("maskmed", 3, (16, 16, 16),
                dict(widths=(8, 16, 32), blocks_per_stage=(1, 1, 1), hidden_dim=32, norm_groups=8, fsad_heads=4,
                     fsad_points=2, fsad_query_stages=2, fsad_layers=1, fsad_ffn_dim=64, head_heads=4,
                     head_ffn_dim=64)),
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, out, model):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from segfuse.kernels import force_backend
    from segfuse.training import distributed as D
    from segfuse.training import TrainConfig, Trainer
    name, dims, patch, kw = MODELS[model]
    cfg = TrainConfig(model=name, data=data, run_dir=os.path.join(out, "run"), dims=dims, iterations=1,
                      iters_per_epoch=1, batch_size=2, patch_size=patch, val_split="none",
                      progress=False, seed=3, device="cpu", model_kwargs=kw)
    with force_backend("reference"):
        tr = Trainer(cfg)
        before = torch.cat([p.detach().flatten() for p in tr.model.parameters()]).clone()
        indices = list(tr._loader(0).sampler)
        tr.fit()
    after = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    torch.save({"before": before, "after": after, "indices": indices}, os.path.join(out, f"rank{rank}.pt"))
    D.cleanup()


@pytest.mark.parametrize("model", list(MODELS))
def test_two_rank_gloo_step_keeps_weights_identical(tiny_data, tmp_path, model):
    mp.spawn(_worker, args=(2, _free_port(), tiny_data, str(tmp_path), model), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["before"], r1["before"])               # same seed -> same init
    assert not set(r0["indices"]) & set(r1["indices"])          # DistributedSampler: disjoint samples
    assert not torch.equal(r0["after"], r0["before"])           # a step happened
    assert torch.equal(r0["after"], r1["after"])                # gradients were all-reduced
    assert (tmp_path / "run" / "last.pt").is_file()             # rank 0 wrote the run folder
