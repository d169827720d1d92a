"""Launch cases of the fused multi-logit loss: the ways the package uses it, at small sizes.

Each case builds seeded inputs and runs :func:`multi_logit_dice_ce` forward and backward, returning the
loss, the per-map losses and every gradient. The compile check captures the kernel launches of each
case at the GPU launch settings (one build per distinct signature); the interpreter tests run the same
cases on both backends and compare them.
"""
from __future__ import annotations

import torch

from ..registry import register_launch_cases
from .function import multi_logit_dice_ce
from .reference import attn_rows, concat_rows, num_supervised_maps, subsets


def make_problem(M, B, C, sizes, target_size, ops, dtype=torch.float32, device="cpu", label_dtype=torch.int64,
                 seed=0, scale=1.0, labels_hi=None):
    """Seeded maps (leaf tensors), labels and mixing parameters (a dict of leaves, ``raw_weights`` first)."""
    g = torch.Generator().manual_seed(seed)
    maps = [(torch.randn(B, C, *s, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()
            for s in sizes]
    y = torch.randint(0, labels_hi or max(C, 2), (B, *target_size), generator=g).to(device=device, dtype=label_dtype)
    T = num_supervised_maps(M, ops)
    params = dict(raw_weights=torch.randn(T, generator=g) * 0.5)
    if "concat" in ops:
        params["concat_weight"] = torch.randn(concat_rows(M), C, C, generator=g) * 0.3
        params["concat_bias"] = torch.randn(len(subsets(M)), C, generator=g) * 0.1
    if "attention" in ops:
        params["attn_weight"] = torch.randn(attn_rows(M), C, generator=g) * 0.5
        params["attn_bias"] = torch.randn(attn_rows(M), generator=g) * 0.1
    params = {k: v.to(device).requires_grad_() for k, v in params.items()}
    return maps, y, params


def run_problem(maps, y, params, ops, **kw):
    """``(loss, per_map, grads of maps..., grads of params...)`` of one fused call."""
    loss, per_map = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=ops, return_per_map=True,
                                        **{k: v for k, v in params.items() if k != "raw_weights"}, **kw)
    if loss.dim():  # reduction="none": the per-class Dice terms, a fixed upstream gradient
        loss = (loss * torch.linspace(0.5, 1.5, loss.numel(), device=loss.device).view_as(loss)).sum()
    grads = torch.autograd.grad(loss, list(maps) + list(params.values()), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(list(maps) + list(params.values()), grads)]
    return (loss, per_map, *grads)


LOMIX = dict(ce_weight=0.3, dice_weight=0.7, squared=True, batch=True, include_background=True)
MONAI_CE = dict(weight_mode="fixed", ce_weight=1.0, dice_weight=1.0, squared=False, batch=False)
ALL_OPS = ("add", "mul", "concat", "attention")

# label: (M, B, C, map sizes, target size, ops, label dtype, loss options). The labels stay within one GPU tile
# (16 voxels at 9 classes, 64 at 3-4, 128 at 1-2), so the interpreter-settings builds are the GPU builds (larger
# LoMix tiles would spill), except deep-native-3d (two GPU tiles: several programs, the fp32 gather kernel),
# which is light enough for its interpreter-sized tile to build too.
CASES = {
    "lomix-M4-C9-all-ops-uint8": (4, 2, 9, [(4, 4)] * 4, (4, 4), ALL_OPS, torch.uint8, LOMIX),
    "lgmsnet-sigmoid-M2-C1": (2, 2, 1, [(8, 11)] * 2, (8, 11), ("add", "mul"), torch.int64,
                              dict(sigmoid=True, squared=False, batch=False, ce_weight=0.5, dice_weight=1.0)),
    "dice-ce-3d-M1-C4": (1, 2, 4, [(2, 3, 5)], (2, 3, 5), (), torch.int64,
                         dict(weight_mode="fixed", ce_weight=1.0, dice_weight=1.0, squared=False, batch=False,
                              include_background=False)),
    "normalized-M6-C3-add-mul": (6, 1, 3, [(4, 5)] * 6, (4, 5), ("add", "mul"), torch.int64,
                                 dict(weight_mode="normalized")),
    "fias-aux-M3-C4-mean": (3, 2, 4, [(3, 4), (6, 8), (6, 8)], (6, 8), ("mean",), torch.int64,
                            dict(weight_mode="fixed", ce_weight=0.6, dice_weight=0.4, squared=False)),
    "deep-M8-C2-add": (8, 1, 2, [(3, 5)] * 8, (3, 5), ("add",), torch.uint8, dict(weight_mode="softplus")),
    # decoder heads at their native resolutions (upsampled in registers, gradients at their own resolution)
    "lomix-native-M4-C9-all-ops": (4, 1, 9, [(1, 1), (2, 2), (4, 4), (4, 4)], (4, 4), ALL_OPS, torch.uint8, LOMIX),
    "deep-native-3d-M3-C4": (3, 1, 4, [(1, 1, 2), (2, 2, 4), (4, 4, 8)], (4, 4, 8), (), torch.int64,
                             dict(weight_mode="fixed", squared=False, batch=False)),
    "deep-native-M3-C2-nearest": (3, 2, 2, [(2, 3), (4, 6), (8, 12)], (8, 12), ("add",), torch.int64,
                                  dict(weight_mode="fixed", upsample="nearest")),
    # nnU-Net's ignore label (every third voxel carries it)
    "lomix-native-M4-C9-all-ops-ignore": (4, 1, 9, [(1, 1), (2, 2), (4, 4), (4, 4)], (4, 4), ALL_OPS, torch.uint8,
                                          dict(LOMIX, ignore_index=255)),
    "dice-ce-3d-M1-C4-ignore": (1, 2, 4, [(2, 3, 5)], (2, 3, 5), (), torch.int64,
                                dict(weight_mode="fixed", ce_weight=1.0, dice_weight=1.0, squared=False, batch=False,
                                     ignore_index=4)),
    # MONAI's per-voxel options: class weights, label smoothing, Jaccard, an ignore label (softmax)
    "monai-weights-smoothing-jaccard-M1-C4": (1, 2, 4, [(3, 5)], (3, 5), (), torch.int64,
                                              dict(MONAI_CE, class_weight=(0.5, 1.0, 2.0, 1.5),
                                                   dice_class_weight=(1.0, 0.5, 2.0, 1.0), label_smoothing=0.1,
                                                   jaccard=True, ignore_index=4)),
    # soft float targets, no activation, MONAI's soft-label Dice, sums
    "monai-soft-no-activation-sum-M2-C3": (2, 2, 3, [(2, 3), (4, 6)], (4, 6), (), "soft",
                                           dict(MONAI_CE, activation="none", soft_label=True, reduction="sum")),
    # sigmoid Dice with MONAI's softmax CE; per-class Dice terms (reduction none: Dice only)
    "monai-sigmoid-softmax-ce-M1-C3": (1, 2, 3, [(4, 5)], (4, 5), (), torch.int64,
                                       dict(MONAI_CE, sigmoid=True, ce_bce=False, class_weight=(1.0, 2.0, 0.5))),
    "monai-dice-terms-none-M1-C3": (1, 2, 3, [(4, 5)], (4, 5), (), torch.int64,
                                    dict(MONAI_CE, ce_weight=0.0, sigmoid=True, reduction="none")),
}


def _case(label):
    M, B, C, sizes, target, ops, label_dtype, kw = CASES[label]

    def run(dtype, device):
        maps, y, params = make_problem(M, B, C, sizes, target, ops, dtype=dtype, device=device,
                                       label_dtype=torch.int64 if label_dtype == "soft" else label_dtype)
        if kw.get("ignore_index") is not None:
            y.view(-1)[::3] = kw["ignore_index"]
        if label_dtype == "soft":  # (B, C, *S) soft targets
            y = torch.softmax(torch.nn.functional.one_hot(y, C).movedim(-1, 1).float() * 2.0, dim=1)
        opts = {k: (torch.tensor(v, device=device) if k.endswith("class_weight") else v) for k, v in kw.items()}
        return run_problem(maps, y, params, ops, validate=False, **opts)
    return run


register_launch_cases("multi_logit_loss", {label: _case(label) for label in CASES})
