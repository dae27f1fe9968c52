"""SCANet and its plain ResNet34 baseline, in plain torch (no torchvision).

The layout follows ``SCANET_REFERENCE.md`` §2, itself taken from the authors' public
successor model (``custom_resnet_neighbor_slice.py``):

* input ``B x 2 x 26 x S x S`` (channel 0 NCCT, channel 1 CTA, stacked: early fusion);
* a global 2D block (ResNet34 stem + layer1) shared by every slice;
* one branch (layer2-4) whose weights every slice neighbourhood shares;
* a spatial attention transformer (SAT) on each slice's layer3 map [ours: placement, size];
* a cross attention transformer (CAT) over the slices of each neighbourhood (``g + MHSA(g)``,
  4 heads, no norm, no MLP, one module for every neighbourhood, as the authors' code);
* auxiliary ``Linear(512 * n_k, 1)`` heads per neighbourhood;
* slice scores -> softmax over slices -> ``Linear(26, 1)``: the weighted softmax (its input
  scaled by 26 [ours]), plus the softmax-weighted mean of per-slice logits [ours]; see
  ``SCANet.forward``.

The forward pass returns the attention it computed, not only the logit: slice weights
(``B x 26``, summing to one) and the SAT map of every slice (``B x 26 x g x g``, the head-
and query-averaged attention each layer3 position receives, ``g = S / 16``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Bump when a change makes earlier checkpoints unloadable (names, shapes or meaning).
ARCHITECTURE_VERSION = 1

RESNET34_LAYERS = (3, 4, 6, 3)
DEFAULT_GROUPS = ((0, 5), (5, 10), (10, 15), (15, 20), (20, 26))


@dataclass(frozen=True)
class Architecture:
    """Everything that fixes the network's shape; recorded in every checkpoint's card."""

    kind: str = "scanet"  # "scanet" or "resnet34" (the slice-averaged baseline)
    in_channels: int = 2
    slices: int = 26
    size: int = 224
    groups: tuple[tuple[int, int], ...] = DEFAULT_GROUPS
    layers: tuple[int, ...] = RESNET34_LAYERS
    sat_heads: int = 8
    sat_mlp: int = 512
    sat_dropout: float = 0.1
    cat_heads: int = 4
    dropout: float = 0.2
    #: Subtract the training cohort's mean input (a buffer saved with the weights) [ours]:
    #: studies registered to one template share most of their image, and what tells them
    #: apart (arteries, clot, asymmetry) is what is left. Off by default (the paper's input).
    subtract_mean: bool = False
    #: Standardise each input voxel by the training cohort's mean and standard deviation
    #: (+ STANDARDIZE_EPS), buffers saved with the weights [ours]. Voxels that never vary
    #: (the template's anatomy) go to 0 and what varies between studies is on one scale; on
    #: the synthetic cohort SCANet learns only with it (issue 5 note).
    standardize: bool = False
    version: int = field(default=ARCHITECTURE_VERSION)

    def __post_init__(self) -> None:
        if self.kind not in ("scanet", "resnet34"):
            raise ValueError(f"architecture kind must be 'scanet' or 'resnet34', not {self.kind!r}")
        if self.size % 16:
            raise ValueError(f"input size must be a multiple of 16, got {self.size}")
        covered = [i for a, b in self.groups for i in range(a, b)]
        if covered != list(range(self.slices)):
            raise ValueError(
                f"neighbourhoods {self.groups} must cover slices 0..{self.slices - 1} in order, "
                "once each"
            )

    @property
    def sat_grid(self) -> int:
        """Side of the layer3 feature map the SAT attends over (14 at 224)."""
        return self.size // 16

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples) for the card."""
        values = asdict(self)
        values["groups"] = [list(g) for g in self.groups]
        values["layers"] = list(self.layers)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Architecture:
        """Inverse of :meth:`as_dict`; unknown keys raise ``TypeError``."""
        values = dict(values)
        if "groups" in values:
            values["groups"] = tuple(tuple(int(i) for i in g) for g in values["groups"])
        if "layers" in values:
            values["layers"] = tuple(int(i) for i in values["layers"])
        return cls(**values)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


def _layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        BasicBlock(in_planes, planes, stride),
        *(BasicBlock(planes, planes) for _ in range(blocks - 1)),
    )


class _ResNet34Parts(nn.Module):
    """Stem and the four stages of a ResNet34 for ``in_channels`` 2D inputs."""

    def __init__(self, in_channels: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = _layer(64, 64, layers[0], 1)
        self.layer2 = _layer(64, 128, layers[1], 2)
        self.layer3 = _layer(128, 256, layers[2], 2)
        self.layer4 = _layer(256, 512, layers[3], 2)


def _init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Kaiming convs, N(0, 0.01) linears, zero-init residuals."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


class SpatialAttention(nn.Module):
    """One pre-norm transformer block over the ``g x g`` positions of a slice's feature map."""

    def __init__(self, channels: int, grid: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, grid * grid, channels))
        self.norm1 = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp, channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``N x C x g x g`` -> same shape, and the map ``N x g x g`` of attention received."""
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.position
        q = self.norm1(tokens)
        attended, weights = self.attn(q, q, q, need_weights=True, average_attn_weights=True)
        tokens = tokens + attended
        tokens = tokens + self.mlp(self.norm2(tokens))
        # weights: N x queries x keys (averaged over heads); mean over queries = how much
        # attention each position receives.
        received = weights.mean(dim=1).reshape(n, h, w)
        return tokens.transpose(1, 2).reshape(n, c, h, w), received


@dataclass
class Output:
    """What a forward pass gives: the logit and the attention behind it."""

    logit: Tensor  # B
    aux: Tensor  # B x neighbourhoods (SCANet), B x 0 (baseline)
    slice_weights: Tensor  # B x slices, rows sum to 1
    sat_maps: Tensor  # B x slices x g x g (SCANet), B x slices x 0 x 0 (baseline)
    cat_attention: list[Tensor] = field(default_factory=list)  # per neighbourhood B x n x n


class SCANet(nn.Module):
    """Slice cross-attention network (see the module docstring)."""

    def __init__(self, arch: Architecture | None = None) -> None:
        super().__init__()
        arch = arch or Architecture()
        if arch.kind != "scanet":
            raise ValueError(f"SCANet needs an architecture of kind 'scanet', not {arch.kind!r}")
        self.arch = arch
        r = _ResNet34Parts(arch.in_channels, arch.layers)
        self.global_block = nn.Sequential(r.stem, r.layer1)
        # One branch: the same layer2-4 modules serve every neighbourhood (shared weights).
        self.layer2, self.layer3, self.layer4 = r.layer2, r.layer3, r.layer4
        self.sat = SpatialAttention(
            256, arch.sat_grid, arch.sat_heads, arch.sat_mlp, arch.sat_dropout
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(arch.dropout)
        self.cat = nn.MultiheadAttention(512, arch.cat_heads, bias=True, batch_first=True)
        self.aux = nn.ModuleList(nn.Linear(512 * (b - a), 1) for a, b in arch.groups)
        self.slice_score = nn.Linear(512, 1)
        self.slice_logit = nn.Linear(512, 1)
        self.combine = nn.Linear(arch.slices, 1)
        _init_weights(self)
        _add_mean_buffer(self, arch)

    def slice_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-slice 512-d features ``B x D x 512`` and SAT maps ``B x D x g x g``."""
        b, c, d, h, w = x.shape
        x = _centre(self, x)
        f = self.global_block(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w))
        f = self.layer3(self.layer2(f))
        f, received = self.sat(f)
        f = self.pool(self.layer4(f)).flatten(1)
        g = received.shape[-1]
        return self.drop(f).view(b, d, 512), received.view(b, d, g, g)

    def forward(self, x: Tensor) -> Output:
        _check_input(x, self.arch)
        features, sat_maps = self.slice_features(x)
        # The heads are small: run them in float32 even under autocast, so that logits close
        # to each other stay distinct (bfloat16 keeps 3 significant digits) and AUCs have no
        # artificial ties.
        with torch.autocast(x.device.type, enabled=False):
            return self._heads(features.float(), sat_maps.float())

    def _heads(self, features: Tensor, sat_maps: Tensor) -> Output:
        outs, aux, cat_maps = [], [], []
        for (a, b), head in zip(self.arch.groups, self.aux, strict=True):
            g = features[:, a:b]
            attended, weights = self.cat(g, g, g, need_weights=True, average_attn_weights=True)
            g = g + attended
            outs.append(g)
            cat_maps.append(weights)
            aux.append(head(g.flatten(1)))
        tokens = self.drop(torch.cat(outs, dim=1))
        scores = self.slice_score(tokens).squeeze(-1)
        weights = torch.softmax(scores, dim=1)
        # Linear(slices, 1) over the softmax, as the authors'; its input is scaled by the number
        # of slices so that a uniform softmax feeds ones, not 1/26 [ours: same function class,
        # but the head learns at the speed of the rest instead of 26 times slower].
        scaled = weights * self.arch.slices
        # [ours] plus the slice-weighted mean of per-slice logits (attention MIL): with it at
        # zero this is the authors' head; with it each slice's evidence reaches the logit
        # directly, and the weights learn which slices carry it.
        evidence = (weights * self.slice_logit(tokens).squeeze(-1)).sum(dim=1)
        logit = self.combine(scaled).squeeze(-1) + evidence
        return Output(logit, torch.cat(aux, dim=1), weights, sat_maps, cat_maps)


class ResNet34Slices(nn.Module):
    """The paper's plain baseline: one 2D ResNet34 on every slice, features averaged over slices."""

    def __init__(self, arch: Architecture | None = None) -> None:
        super().__init__()
        arch = arch or Architecture(kind="resnet34")
        if arch.kind != "resnet34":
            raise ValueError(
                f"the baseline needs an architecture of kind 'resnet34', not {arch.kind!r}"
            )
        self.arch = arch
        self.backbone = _ResNet34Parts(arch.in_channels, arch.layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(arch.dropout)
        self.fc = nn.Linear(512, 1)
        _init_weights(self)
        _add_mean_buffer(self, arch)

    def forward(self, x: Tensor) -> Output:
        _check_input(x, self.arch)
        b, c, d, h, w = x.shape
        x = _centre(self, x)
        r = self.backbone
        f = r.stem(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w))
        f = r.layer4(r.layer3(r.layer2(r.layer1(f))))
        with torch.autocast(x.device.type, enabled=False):  # float32 head, as SCANet's
            f = self.pool(f.float()).flatten(1).view(b, d, 512).mean(dim=1)
            logit = self.fc(self.drop(f)).squeeze(-1)
        uniform = torch.full((b, d), 1.0 / d, device=x.device)
        return Output(logit, logit.new_zeros(b, 0), uniform, logit.new_zeros(b, d, 0, 0))


#: Added to the per-voxel standard deviation before dividing (inputs are windowed to 0..1).
STANDARDIZE_EPS = 0.05


def _add_mean_buffer(module: nn.Module, arch: Architecture) -> None:
    shape = (arch.in_channels, arch.slices, arch.size, arch.size)
    if arch.subtract_mean or arch.standardize:
        module.register_buffer("input_mean", torch.zeros(shape))
    if arch.standardize:
        module.register_buffer("input_scale", torch.ones(shape))


def _centre(module: nn.Module, x: Tensor) -> Tensor:
    mean = getattr(module, "input_mean", None)
    if mean is None:
        return x
    scale = getattr(module, "input_scale", None)
    centred: Tensor = x - mean
    return centred if scale is None else centred / scale


def set_input_mean(model: nn.Module, inputs: Tensor) -> None:
    """Store the mean of ``N x C x D x S x S`` training inputs (no-op without the buffer)."""
    mean = getattr(model, "input_mean", None)
    if isinstance(mean, Tensor):
        mean.copy_(inputs.float().mean(dim=0).to(mean.device))


def set_input_scale(model: nn.Module, std: Tensor) -> None:
    """Store the per-voxel standard deviation of the training inputs (+ STANDARDIZE_EPS)."""
    scale = getattr(model, "input_scale", None)
    if isinstance(scale, Tensor):
        scale.copy_((std.float() + STANDARDIZE_EPS).to(scale.device))


def _check_input(x: Tensor, arch: Architecture) -> None:
    expected = (arch.in_channels, arch.slices, arch.size, arch.size)
    if x.ndim != 5 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"the network takes B x {' x '.join(map(str, expected))} input, got {tuple(x.shape)}"
        )


def build(arch: Architecture) -> SCANet | ResNet34Slices:
    """The network an architecture describes."""
    return SCANet(arch) if arch.kind == "scanet" else ResNet34Slices(arch)


def loss_fn(output: Output, target: Tensor, aux_weight: float = 0.25) -> Tensor:
    """``BCE(main) + aux_weight * mean_k BCE(aux_k)`` [ours: the authors' loss is not public]."""
    target = target.float()
    loss = F.binary_cross_entropy_with_logits(output.logit.float(), target)
    if output.aux.shape[1]:
        aux_target = target[:, None].expand_as(output.aux)
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(
            output.aux.float(), aux_target
        )
    return loss


def slab_loss(output: Output, slabs: Tensor, reach: int = 1) -> Tensor:
    """``-log`` of the slice-softmax mass within ``reach`` slabs of the clot's slab [ours].

    Rows whose slab is unknown (-1) are left out; 0 when no row has one. It teaches the slice
    attention where the evidence is, which SCANet does not find alone on a small cohort.
    """
    known = slabs >= 0
    if not bool(known.any()):
        return output.slice_weights.new_zeros(())
    weights = output.slice_weights[known].float()
    index = torch.arange(weights.shape[1], device=weights.device)
    near = (index[None, :] - slabs[known][:, None]).abs() <= reach
    mass = (weights * near).sum(dim=1)
    return -torch.log(mass.clamp_min(1e-6)).mean()
