"""MaskMed (Xie & Agam, arXiv 2511.15603), 3D: residual U-Net + FSAD transformer + masked multi-scale
mask-classification head.

No official code exists (design notes, section 5); the parts the paper's abstract and reviews establish
are followed (FSAD deformable attention from low-resolution encoder tokens into all encoder scales; shared
object queries refined coarse -> fine with masked attention; one query per class; separate CNN /
transformer learning rates), every other number is a documented constructor argument.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.utils import (InputShapeError, InputValueError, check_tensor, conv_transpose_type, conv_type,
                                   instance_norm_type)

from .blocks.fsad import FSADTransformer
from .blocks.mask_head import MaskedMultiScaleHead
from .registry import register_model


def _conv_norm(cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> List[nn.Module]:
    """nnU-Net's conv (bias) -> InstanceNorm (affine, eps 1e-5), 3D."""
    return [conv_type(3)(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=True),
            instance_norm_type(3)(cout, eps=1e-5, affine=True)]


class ConvNormLReLU(nn.Sequential):
    """conv 3x3x3 -> InstanceNorm -> LeakyReLU(0.01) (nnU-Net's ``ConvDropoutNormReLU``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(*_conv_norm(in_channels, out_channels, 3, stride), nn.LeakyReLU(0.01, inplace=True))


class ResidualBlock(nn.Module):
    """nnU-Net ``BasicBlockD``: ``LReLU(IN(conv(ConvNormLReLU(x, stride))) + skip(x))``, where ``skip`` is
    AvgPool(stride) when strided, then 1x1x1 conv + IN when the width changes (else identity).

    ``(N, in_channels, *S)`` -> ``(N, out_channels, *S / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormLReLU(in_channels, out_channels, stride)
        self.conv2 = nn.Sequential(*_conv_norm(out_channels, out_channels))
        skip = []
        if stride != 1:
            skip.append(nn.AvgPool3d(stride, stride))
        if in_channels != out_channels:
            skip += _conv_norm(in_channels, out_channels, kernel_size=1)
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualEncoder(nn.Module):
    """nnU-Net ``ResidualEncoder`` (3D): stem ConvNormLReLU(in -> widths[0]), then per stage s
    ``blocks_per_stage[s]`` :class:`ResidualBlock` s, the first with stride 2 (stage 0: stride 1).

    ``(N, in_channels, D, H, W)`` -> list of stage maps fine -> coarse, map s ``(N, widths[s], D/2^s, ...)``.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], blocks_per_stage: Sequence[int]):
        super().__init__()
        self.stem = ConvNormLReLU(in_channels, widths[0])
        stages, cin = [], widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks_per_stage)):
            stages.append(nn.Sequential(*[ResidualBlock(cin if b == 0 else w, w, 2 if (s and b == 0) else 1)
                                          for b in range(n)]))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class UNetDecoder(nn.Module):
    """nnU-Net ``UNetDecoder`` (3D): from the coarsest stage, per finer stage s a transposed conv (k 2,
    stride 2, ``widths[s+1] -> widths[s]``), concat with skip s, ``convs_per_stage`` ConvNormLReLU s
    (``2 widths[s] -> widths[s]``).

    Forward: stage maps fine -> coarse (as :class:`ResidualEncoder` gives them) -> decoder maps coarse ->
    fine, ``len(widths) - 1`` of them, the last at full resolution with ``widths[0]`` channels.
    """

    def __init__(self, widths: Sequence[int], convs_per_stage: int = 1):
        super().__init__()
        up = conv_transpose_type(3)
        finer = list(reversed(range(len(widths) - 1)))  # s = S-2 .. 0
        self.ups = nn.ModuleList(up(widths[s + 1], widths[s], 2, stride=2, bias=True) for s in finer)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ConvNormLReLU(2 * widths[s] if i == 0 else widths[s], widths[s])
                            for i in range(convs_per_stage)]) for s in finer)

    def forward(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        x = skips[-1]
        out = []
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips[:-1])):
            x = block(torch.cat((up(x), skip), dim=1))
            out.append(x)
        return out


class MaskMed(nn.Module):
    """MaskMed (3D): residual U-Net whose coarsest encoder stages are refined by the FSAD transformer, and a
    masked multi-scale mask-classification head on every decoder stage.

    Data flow: :class:`ResidualEncoder` (stages fine -> coarse, stride 2 between stages) ->
    :class:`~segfuse.models.blocks.fsad.FSADTransformer` (the ``fsad_query_stages`` coarsest stages attend
    deformably to all stages and replace their features) -> :class:`UNetDecoder` (``len(widths) - 1`` maps,
    strides ``2^(S-2) .. 1``) -> :class:`~segfuse.models.blocks.mask_head.MaskedMultiScaleHead` (one
    class + mask prediction per decoder map).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels. num_classes: semantic classes, background included.
        deep_supervision: accepted and ignored (training mode always returns every stage).
        widths: encoder stage widths, fine -> coarse (nnU-Net 3D: 32, 64, 128, 256, 320); ``size_multiple =
            2 ** (len(widths) - 1)``.
        blocks_per_stage: residual blocks per encoder stage (default nnU-Net ResEnc-M's 1, 3, 4, 6, 6).
        decoder_convs_per_stage: ConvNormLReLU blocks per decoder stage (ResEnc presets: 1).
        hidden_dim: width of the FSAD tokens and of the head (default 192; ASSUMPTION, Deformable-DETR and
            Mask2Former use 256).
        fsad_query_stages, fsad_layers, fsad_heads, fsad_points, fsad_ffn_dim, fsad_dropout, norm_groups,
            deterministic: FSAD (defaults 3 coarsest stages, 3 layers, 8 heads, 4 points, FFN 768,
            dropout 0.1, GroupNorm 32; ASSUMPTIONS after Deformable-DETR / CoTr, see
            :class:`~segfuse.models.blocks.fsad.FSADTransformer`).
        num_queries, head_heads, head_ffn_dim, head_dropout, head_layers_per_stage, cross_attention_stages:
            head (defaults num_classes queries, 8 heads, FFN 1536, dropout 0, 1 layer per stage, cross-
            attention on every decoder stage but the full-resolution one; ASSUMPTIONS after Mask2Former,
            see :class:`~segfuse.models.blocks.mask_head.MaskedMultiScaleHead`).
        criterion_kwargs: keyword arguments of :meth:`criterion` (``segfuse.losses.MaskMedCriterion``).

    Shapes:
        input ``(N, in_channels, D, H, W)``, every spatial size a multiple of ``size_multiple``.
        training mode: ``{"class_logits": [(N, Q, num_classes + 1)] * stages, "mask_logits":
        [(N, Q, D/s, H/s, W/s) for s in output_strides]}``, coarse -> fine, the last at full resolution.
        eval mode: ``(N, num_classes, D, H, W)`` = ``log(clamp_min(semantic score, 1e-6))`` of the final
        stage (softmax over channels renormalises the scores; argmax gives the label map).

    Learning rates: :meth:`param_groups` splits the CNN (encoder, decoder) from the transformer parts (FSAD,
    head); train the latter at ``base_lr * default_transformer_lr_scale``. The reviews only report that a
    single learning rate collapsed training; the 0.1 ratio is an ASSUMPTION.

    Memory (fp32, defaults, forward + backward, one patch): measured 2.7 GB above the weights for a 64^3
    patch (CPU peak); the full-resolution parts (CNN stem and decoder, FSAD value memory and its per-layer
    value projections, the head's voxel embeddings) scale with the voxel count, so about 20 GB per 128^3
    patch in fp32 (estimate, not measured on a GPU). Fewer FSAD layers, a smaller ``hidden_dim`` or
    autocast reduce it (under autocast the deformable attention itself stays fp32).

    Example:
        >>> net = MaskMed(3, 1, 3, widths=(8, 16, 32, 32), blocks_per_stage=(1, 1, 1, 1), hidden_dim=32,
        ...               fsad_heads=4, fsad_points=2, head_heads=4, norm_groups=8).eval()
        >>> net(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    #: transformer parts train at ``base_lr * default_transformer_lr_scale`` (ASSUMPTION, see class docstring)
    default_transformer_lr_scale = 0.1

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2,
                 deep_supervision: bool = False, widths: Sequence[int] = (32, 64, 128, 256, 320),
                 blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6), decoder_convs_per_stage: int = 1,
                 hidden_dim: int = 192, fsad_query_stages: int = 3, fsad_layers: int = 3, fsad_heads: int = 8,
                 fsad_points: int = 4, fsad_ffn_dim: int = 768, fsad_dropout: float = 0.1, norm_groups: int = 32,
                 deterministic: bool = False, num_queries: Optional[int] = None, head_heads: int = 8,
                 head_ffn_dim: int = 1536, head_dropout: float = 0.0, head_layers_per_stage: int = 1,
                 cross_attention_stages: Optional[int] = None, criterion_kwargs: Optional[dict] = None):
        super().__init__()
        if spatial_dims != 3 or isinstance(spatial_dims, bool):
            raise InputValueError(f"MaskMed is 3D only: spatial_dims must be 3, got {spatial_dims!r}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("decoder_convs_per_stage", decoder_convs_per_stage)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MaskMed: {name} must be a positive int, got {v!r}")
        widths = tuple(widths)
        if len(widths) < 2 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"MaskMed: widths must be at least 2 positive ints (encoder stages, fine -> "
                             f"coarse), got {widths!r}")
        blocks_per_stage = tuple(blocks_per_stage)
        if len(blocks_per_stage) != len(widths) or any(
                not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in blocks_per_stage):
            raise ValueError(f"MaskMed: blocks_per_stage must be {len(widths)} positive ints (one per entry of "
                             f"widths), got {blocks_per_stage!r}")
        if criterion_kwargs is not None and not isinstance(criterion_kwargs, dict):
            raise TypeError(f"MaskMed: criterion_kwargs must be a dict or None, got {type(criterion_kwargs).__name__}")
        self.spatial_dims, self.in_channels, self.num_classes = 3, in_channels, num_classes
        self.deep_supervision = bool(deep_supervision)  # accepted, ignored
        self.widths = widths
        self.size_multiple = 2 ** (len(widths) - 1)
        self.output_strides = tuple(2 ** s for s in reversed(range(len(widths) - 1)))
        self.criterion_kwargs = dict(criterion_kwargs or {})

        self.encoder = ResidualEncoder(in_channels, widths, blocks_per_stage)
        self.fsad = FSADTransformer(widths, hidden_dim=hidden_dim, num_query_stages=fsad_query_stages,
                                    num_layers=fsad_layers, num_heads=fsad_heads, num_points=fsad_points,
                                    ffn_dim=fsad_ffn_dim, dropout=fsad_dropout, norm_groups=norm_groups,
                                    deterministic=deterministic)
        self.decoder = UNetDecoder(widths, decoder_convs_per_stage)
        self.head = MaskedMultiScaleHead(tuple(reversed(widths[:-1])), num_classes, num_queries=num_queries,
                                         hidden_dim=hidden_dim, num_heads=head_heads, ffn_dim=head_ffn_dim,
                                         dropout=head_dropout, layers_per_stage=head_layers_per_stage,
                                         cross_attention_stages=cross_attention_stages)
        self.num_queries = self.head.num_queries

    # ------------------------------------------------------------------ forward
    def check_input(self, x) -> None:
        """InputTypeError / InputShapeError unless ``x`` is a float ``(N, in_channels, D, H, W)`` tensor with
        ``D, H, W`` multiples of :attr:`size_multiple`."""
        check_tensor("x", x, ndim=5, layout_hint="(N, C, D, H, W)")
        if x.shape[1] != self.in_channels:
            raise InputShapeError(f"MaskMed: x has {x.shape[1]} channels but the model was built with "
                                  f"in_channels={self.in_channels}; expected (N, {self.in_channels}, D, H, W), "
                                  f"got {tuple(x.shape)}")
        if any(s % self.size_multiple for s in x.shape[2:]):
            raise InputShapeError(f"MaskMed: the spatial sizes (D, H, W) of x must be multiples of "
                                  f"size_multiple={self.size_multiple} (2 ** (len(widths) - 1)), "
                                  f"got {tuple(x.shape[2:])}; pad or crop the input")

    def forward_features(self, x: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        """The per-stage predictions (training-mode output), whatever the mode."""
        self.check_input(x)
        stages = self.fsad(self.encoder(x))
        return self.head(self.decoder(stages))

    def forward(self, x: torch.Tensor):
        """``x (N, in_channels, D, H, W)`` -> training: dict of per-stage ``class_logits`` / ``mask_logits``
        (coarse -> fine); eval: log semantic scores ``(N, num_classes, D, H, W)``."""
        outputs = self.forward_features(x)
        if self.training:
            return outputs
        return self.semantic_scores(outputs).clamp_min(1e-6).log()

    @staticmethod
    def semantic_scores(outputs: Dict[str, List[torch.Tensor]]) -> torch.Tensor:
        """Mask2Former's semantic inference on the final stage: ``score_c = sum_q softmax(class_q)[c] *
        sigmoid(mask_q)``, no-object column dropped. ``(N, num_classes, *S)`` fp32, values in [0, Q]."""
        class_logits, mask_logits = outputs["class_logits"][-1], outputs["mask_logits"][-1]
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):  # fp32 scores under autocast
            probs = class_logits.float().softmax(dim=-1)[..., :-1]  # (N, Q, C)
            return torch.einsum("nqc,nq...->nc...", probs, mask_logits.float().sigmoid())

    # ------------------------------------------------------------------ training helpers
    def criterion(self, ignore_index: Optional[int] = None) -> nn.Module:
        """``segfuse.losses.MaskMedCriterion(num_classes, ignore_index=..., **criterion_kwargs)``: forward(outputs,
        target ``(N, D, H, W)`` int64) -> scalar; ``ignore_index``: nnU-Net's ignore label, in no mask term."""
        from segfuse.losses import MaskMedCriterion

        return MaskMedCriterion(self.num_classes, ignore_index=ignore_index, **self.criterion_kwargs)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """``{"cnn": encoder + decoder parameters, "transformer": FSAD + head parameters}``; every parameter
        once. Train "transformer" at ``base_lr * default_transformer_lr_scale``."""
        return {"cnn": list(self.encoder.parameters()) + list(self.decoder.parameters()),
                "transformer": list(self.fsad.parameters()) + list(self.head.parameters())}


@register_model("maskmed")
def _maskmed(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw):
    return MaskMed(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
