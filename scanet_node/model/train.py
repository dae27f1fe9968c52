"""Training: stratified k-fold cross-validation, early stopping, resumable runs.

The paper's settings are the defaults (Adam with weight decay, batch 12, lr 1e-4, up to
200 epochs, early stopping on validation AUC). Early stopping uses an inner validation
split of each training part, so the held-out fold never steers training and its metrics
are honest. Every epoch writes the run's state (model, optimiser, best weights, history,
random state), so an interrupted run continues where it stopped when started again.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from scanet_node.model.device import autocast, pick_device
from scanet_node.model.metrics import roc_auc
from scanet_node.model.network import (
    RESNET34_LAYERS,
    Architecture,
    Output,
    build,
    loss_fn,
    set_input_mean,
    set_input_scale,
    slab_loss,
)

logger = logging.getLogger(__name__)

#: Blocks per ResNet stage of the branches, by depth (``scanet-node train --depth``).
RESNET_DEPTHS: dict[int, tuple[int, ...]] = {18: (2, 2, 2, 2), 34: RESNET34_LAYERS}


@dataclass(frozen=True)
class TrainSettings:
    """How to train; recorded in the card."""

    epochs: int = 200
    batch_size: int = 12
    lr: float = 1e-4
    weight_decay: float = 1e-4
    patience: int = 20
    folds: int = 5
    seed: int = 0
    aux_weight: float = 0.25
    augment: bool = True
    val_fraction: float = 0.15
    device: str = "auto"  # "auto", "cpu", "cuda"
    cpu_bf16: bool = False  # bf16 autocast on CPU too (AMP is always on for CUDA)
    threads: int = 0  # CPU threads, 0 = torch's default
    subtract_mean: bool = False  # the networks subtract the training inputs' mean [ours]
    standardize: bool = False  # ... and divide by their per-voxel SD [ours]
    layers: tuple[int, ...] = RESNET34_LAYERS  # (2, 2, 2, 2): ResNet18 depth [ours, for CPUs]
    optimizer: str = "adam"  # "adam" (the paper's) or "adamw" [ours]
    schedule: str = "constant"  # "constant" or "cosine" (to zero over ``epochs``) [ours]
    #: Train towards the generator's true probability where labels.csv has one (synthetic
    #: cohorts) instead of the drawn label [ours]; evaluation is always against drawn labels.
    soft_targets: bool = False
    #: Weight of -log(slice-softmax mass within one slab of the clot) where labels.csv has
    #: ``clot_slab`` [ours]; 0 leaves the slice attention unsupervised, as the paper.
    slab_weight: float = 0.0
    #: Which weights a run keeps: "best" (the epoch of the highest validation ROC-AUC, the
    #: paper's early stopping) or "last" (the end of the schedule [ours]: with a cosine
    #: schedule the last epoch is the settled one, and on a small validation split an early
    #: epoch can top the AUC by chance).
    select: str = "best"
    #: Typical registration error to imitate in training, in mm (0 = off) [ours]: each study
    #: is moved by a random rigid transform and scaling (translations up to this many mm per
    #: axis, rotations and scale that move the head's edge as far) and its CTA by a further third
    #: of it, before standardisation, as ``prepare``'s registration leaves them at inference.
    misregister_mm: float = 0.0
    #: Weights SHA-256 of the checkpoint training starts from (fine-tuning, [ours]); empty:
    #: from scratch. Its input standardisation is kept.
    init: str = ""

    def __post_init__(self) -> None:
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', not {self.select!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', not {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if not 0.0 <= self.misregister_mm <= 20.0:
            raise ValueError(f"misregister_mm must be 0..20 mm, not {self.misregister_mm!r}")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))

    def architecture(self, kind: str, size: int) -> Architecture:
        """The network these settings train."""
        return Architecture(
            kind=kind,
            size=size,
            layers=self.layers,
            subtract_mean=self.subtract_mean,
            standardize=self.standardize,
        )

    def key(self) -> str:
        """What must match for a saved state to be resumed (patience, threads, and the number of
        epochs of a constant learning rate, may differ)."""
        values = asdict(self)
        for option in ("misregister_mm", "init"):
            if not values[option]:
                values.pop(option)  # states saved before the option resume as they were
        # which epoch is kept does not change how training goes
        free_keys = ("patience", "threads", "select")
        for free in (*free_keys, *(("epochs",) if self.schedule == "constant" else ())):
            values.pop(free)
        return json.dumps(values, sort_keys=True)


def augment(
    x: torch.Tensor, generator: torch.Generator, *, standardised: bool = False
) -> torch.Tensor:
    """Left-right flip, in-plane shift up to 1/28 of the size, intensity scale, noise.

    Cheap and label-preserving: the occlusion's side is random in the data, a shift of a few
    pixels is within registration error, and the scale and noise within scanner variation.
    ``x`` is a windowed input (0..1, 0 outside the head: the result stays in 0..1), or with
    ``standardised`` what a standardising network sees (deviations from the cohort's mean in
    its SDs: scaled and noised wherever not 0, never clipped, since a bright artery is many
    SDs above the mean and must reach the network as it will at inference).
    """
    b, c, _, h, _ = x.shape
    out = x.clone()
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    limit = max(1, h // 28)
    shifts = torch.randint(-limit, limit + 1, (b, 2), generator=generator)
    for i in range(b):
        out[i] = torch.roll(out[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(-2, -1))
    scale = 1.0 + 0.1 * (torch.rand(b, c, 1, 1, 1, generator=generator) - 0.5)
    noise = 0.01 * torch.randn(out.shape, generator=generator)
    if standardised:
        return torch.where(out != 0, out * scale + noise, out)
    inside = out > 0
    return torch.where(inside, (out * scale + noise).clamp(0.0, 1.0), out)


#: Distance from the template's centre to the head's edge used to turn a displacement in mm into
#: a rotation and a scaling of the same size there.
HEAD_RADIUS_MM = 70.0


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """``B x 3 x 3`` rotations from ``B x 3`` angles (radians) about x, y and z."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    rx = torch.stack(
        [one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], dim=1
    )
    ry = torch.stack(
        [cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], dim=1
    )
    rz = torch.stack(
        [cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], dim=1
    )
    return rz.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rx.view(-1, 3, 3)


def _random_affines(
    n: int, mm: float, half_extent_mm: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``n x 3 x 4`` sampling matrices for :func:`torch.nn.functional.affine_grid` that move a
    volume of ``half_extent_mm`` (x, y, z) by a random similarity transform of about ``mm``."""
    angle = mm / HEAD_RADIUS_MM
    rotation = _rotation(angle * (2 * torch.rand(n, 3, generator=generator) - 1))
    scale = 1.0 + angle * (2 * torch.rand(n, 1, 1, generator=generator) - 1)
    shift_mm = mm * (2 * torch.rand(n, 3, generator=generator) - 1)
    # in mm about the centre, then into affine_grid's -1..1 coordinates per axis
    to_unit = torch.diag(1.0 / half_extent_mm)
    matrix = to_unit @ (rotation * scale) @ torch.diag(half_extent_mm)
    return torch.cat([matrix, (shift_mm / half_extent_mm).unsqueeze(-1)], dim=2)


def misregister(
    x: torch.Tensor,
    generator: torch.Generator,
    mm: float,
    *,
    voxel_mm: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Move each study of ``N x 2 x D x S x S`` template-space inputs (NCCT, CTA) as a
    registration that is off by about ``mm`` would, and its CTA by a further ``mm / 3``.

    Inputs made straight in template space are perfectly aligned; ``prepare``'s affine
    registration leaves a few mm (its median error on the synthetic landmarks is ~3 mm), and
    a network that has never seen that reads it as anatomy. ``voxel_mm`` is the size of a
    voxel along D, S and S (the model input's slab thickness and pixel by default). Trilinear
    resampling; what comes in from outside the grid is 0, the background.
    """
    from torch.nn import functional

    from scanet_node.imaging.model_input import FOV_MM, SLAB_MM

    if mm <= 0:
        return x
    n, c, d, h, w = x.shape
    if voxel_mm is None:
        voxel_mm = (SLAB_MM, FOV_MM / h, FOV_MM / w)
    half = torch.tensor([w * voxel_mm[2], h * voxel_mm[1], d * voxel_mm[0]]) / 2  # x, y, z
    head = _random_affines(n, mm, half, generator)
    cta = _random_affines(n, mm / 3, half, generator)
    # the CTA's sampling goes through its own error, then the head's
    square = torch.cat([cta, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(n, 1, 4)], dim=1)
    cta = head @ square
    out = torch.empty_like(x)
    for channel, theta in ((0, head), (1, cta)):
        grid = functional.affine_grid(theta, [n, 1, d, h, w], align_corners=False)
        out[:, channel : channel + 1] = functional.grid_sample(
            x[:, channel : channel + 1],
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
    if c > 2:
        out[:, 2:] = x[:, 2:]
    return out


@dataclass
class Predictions:
    """Per-case outputs of a model on a set of inputs."""

    probabilities: npt.NDArray[np.float64]
    slice_weights: npt.NDArray[np.float32]  # N x slices


def augment_standardised(
    x: torch.Tensor, model: nn.Module, generator: torch.Generator
) -> torch.Tensor:
    """:func:`augment` in the standardised space of a network that standardises its input.

    Shifting or rescaling the raw input would move every voxel off its cohort mean by many
    standard deviations and drown the signal; augmenting what the network sees keeps the
    anatomy that never varies at 0.
    """
    buffers = dict(model.named_buffers())
    mean, scale = buffers["input_mean"].detach().cpu(), buffers["input_scale"].detach().cpu()
    z = augment((x - mean) / scale, generator, standardised=True)
    return z * scale + mean


def predict(
    model: nn.Module,
    inputs: npt.NDArray[np.floating],
    *,
    batch_size: int = 8,
    device: torch.device | None = None,
    cpu_bf16: bool = False,
) -> Predictions:
    """Probabilities and slice weights of ``inputs`` (``N x 2 x D x S x S``), eval mode."""
    device = device or next(model.parameters()).device
    model.eval()
    probs, weights = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.as_tensor(np.asarray(inputs[start : start + batch_size], dtype=np.float32))
            with autocast(device, cpu_bf16):
                out: Output = model(x.to(device))
            probs.append(torch.sigmoid(out.logit.float()).cpu().numpy())
            weights.append(out.slice_weights.float().cpu().numpy())
    return Predictions(
        np.concatenate(probs).astype(np.float64), np.concatenate(weights).astype(np.float32)
    )


@dataclass
class FitResult:
    """The best weights of one training run and how it went."""

    model: nn.Module
    best_auc: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if len(chunk) >= 2:  # batch norm needs two samples
            yield chunk


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(
    arch: Architecture,
    train_x: npt.NDArray[np.floating],
    train_y: npt.NDArray[np.integer],
    val_x: npt.NDArray[np.floating],
    val_y: npt.NDArray[np.integer],
    settings: TrainSettings,
    *,
    train_soft: npt.NDArray[np.floating] | None = None,
    train_slabs: npt.NDArray[np.integer] | None = None,
    state_path: Path | None = None,
    curve_path: Path | None = None,
    desc: str = "train",
    progress: bool = True,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train one network with early stopping on validation AUC; resumable from ``state_path``.

    ``train_soft`` (the true probability, NaN where unknown) is the target instead of the label
    when ``settings.soft_targets``; ``train_slabs`` (-1 where unknown) feeds the slab term when
    ``settings.slab_weight``. The learning curve (loss, validation AUC, seconds and learning rate
    per epoch) is rewritten to ``curve_path`` (CSV) after every epoch. ``init_state`` (the
    weights of ``settings.init``) starts from trained weights, input standardisation included.
    """
    from tqdm import tqdm

    run = _start_run(arch, settings, train_x, init_state)
    record = _Record(best_state=copy.deepcopy(run.model.state_dict()))
    if state_path is not None and state_path.is_file():
        _resume(run, record, state_path, desc)
    y_train = torch.as_tensor(training_targets(train_y, train_soft, settings), dtype=torch.float32)
    slabs = torch.as_tensor(
        np.full(len(train_y), -1) if train_slabs is None else np.asarray(train_slabs),
        dtype=torch.long,
    )
    use_slabs = settings.slab_weight > 0 and arch.kind == "scanet" and bool((slabs >= 0).any())
    epoch = record.start_epoch - 1
    for epoch in range(record.start_epoch, settings.epochs):
        if epoch - record.best_epoch > settings.patience and record.best_epoch >= 0:
            break
        lr = learning_rate(settings, epoch)
        for group in run.optimiser.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        loss = _train_epoch(
            run,
            train_x,
            y_train,
            slabs if use_slabs else None,
            f"{desc} epoch {epoch + 1}",
            progress,
        )
        auc = _validation_auc(run, val_x, val_y)
        seconds = time.perf_counter() - started
        record.add_epoch(run.model, epoch, loss, auc, seconds, lr)
        line = (
            f"{desc} epoch {epoch + 1}: loss {loss:.4f}, val AUC {auc:.3f} "
            f"(best {record.best_auc:.3f} at epoch {record.best_epoch + 1}), {seconds:.0f} s"
        )
        (tqdm.write if progress else logger.info)(line)
        if curve_path is not None:
            write_curve(curve_path, record.history)
        if state_path is not None:
            _save_state(state_path, _checkpoint(run, record, epoch))
    return _result(run, record, epoch)


@dataclass
class _Run:
    """What the epochs of one training run share."""

    model: nn.Module
    optimiser: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    settings: TrainSettings
    arch: Architecture

    @property
    def key(self) -> str:
        """What a saved state must have been made with to be resumed by this run."""
        return self.settings.key() + self.arch.kind + str(self.arch.size)


@dataclass
class _Record:
    """The run's history and best epoch so far (-1: none yet), and where it starts."""

    best_state: dict[str, Any]
    best_auc: float = -math.inf
    best_epoch: int = -1
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def add_epoch(
        self, model: nn.Module, epoch: int, loss: float, auc: float, seconds: float, lr: float
    ) -> None:
        """Append one epoch to the history; keep the model's weights when its AUC is best."""
        self.history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "val_auc": auc,
                "seconds": round(seconds, 1),
                "lr": lr,
            }
        )
        if auc > self.best_auc:
            self.best_auc, self.best_epoch = auc, epoch
            self.best_state = copy.deepcopy(model.state_dict())


def _start_run(
    arch: Architecture,
    settings: TrainSettings,
    train_x: npt.NDArray[np.floating],
    init_state: Mapping[str, torch.Tensor] | None,
) -> _Run:
    """The seeded model (initial or given weights, inputs standardised), optimiser and
    batch generator."""
    device = pick_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = build(arch).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif arch.subtract_mean or arch.standardize:
        _standardise_inputs(model, train_x)
    optimiser_type = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    optimiser = optimiser_type(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    generator = torch.Generator().manual_seed(settings.seed)
    return _Run(model, optimiser, generator, device, settings, arch)


def _standardise_inputs(model: nn.Module, train_x: npt.NDArray[np.floating]) -> None:
    """Set the model's input mean and scale to the training inputs' (read 32 at a time)."""
    sums = np.zeros(train_x.shape[1:], dtype=np.float64)
    squares = np.zeros(train_x.shape[1:], dtype=np.float64)
    for start in range(0, len(train_x), 32):
        chunk = np.asarray(train_x[start : start + 32], dtype=np.float64)
        sums += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
    mean = sums / len(train_x)
    set_input_mean(model, torch.as_tensor(mean)[None])
    std = np.sqrt(np.maximum(squares / len(train_x) - mean**2, 0.0))
    set_input_scale(model, torch.as_tensor(std))


def _resume(run: _Run, record: _Record, state_path: Path, desc: str) -> None:
    """Continue from the state saved at ``state_path`` when it was made with these settings."""
    saved = torch.load(state_path, map_location=run.device, weights_only=False)
    if saved.get("key") != run.key:
        logger.warning("%s: %s was made with other settings; starting afresh", desc, state_path)
        return
    run.model.load_state_dict(saved["model"])
    run.optimiser.load_state_dict(saved["optimiser"])
    run.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    record.best_state, record.best_auc, record.best_epoch = (
        saved["best_state"],
        saved["best_auc"],
        saved["best_epoch"],
    )
    record.history, record.start_epoch = saved["history"], saved["epoch"] + 1
    logger.info(
        "%s: resuming after epoch %d (best AUC %.3f)", desc, saved["epoch"] + 1, record.best_auc
    )


def _train_epoch(
    run: _Run,
    train_x: npt.NDArray[np.floating],
    y_train: torch.Tensor,
    slabs: torch.Tensor | None,
    label: str,
    progress: bool,
) -> float:
    """One pass over the training set in shuffled batches; the mean loss per sample.

    ``slabs``: the slab targets when the slab term is trained, else None.
    """
    from tqdm import tqdm

    settings, model, device = run.settings, run.model, run.device
    model.train()
    total, seen = 0.0, 0
    batches = list(_batches(len(train_x), settings.batch_size, run.generator))
    bar = tqdm(batches, desc=label, leave=False, disable=not progress, unit="batch")
    for index in bar:
        idx = index.numpy()
        x = torch.as_tensor(np.asarray(train_x[idx], dtype=np.float32))
        if settings.misregister_mm > 0:
            x = misregister(x, run.generator, settings.misregister_mm)
        if settings.augment and run.arch.standardize:
            x = augment_standardised(x, model, run.generator)
        elif settings.augment:
            x = augment(x, run.generator)
        with autocast(device, settings.cpu_bf16):
            out = model(x.to(device))
        loss = loss_fn(out, y_train[index].to(device), settings.aux_weight)
        if slabs is not None:
            loss = loss + settings.slab_weight * slab_loss(out, slabs[index].to(device))
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimiser.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(seen, 1)


def _validation_auc(
    run: _Run, val_x: npt.NDArray[np.floating], val_y: npt.NDArray[np.integer]
) -> float:
    """AUC on the validation split; NaN when it holds one class only."""
    val = predict(run.model, val_x, device=run.device, cpu_bf16=run.settings.cpu_bf16)
    return roc_auc(val.probabilities, val_y) if 0 < np.sum(val_y) < len(val_y) else float("nan")


def _checkpoint(run: _Run, record: _Record, epoch: int) -> dict[str, Any]:
    """Everything an interrupted run needs to continue after ``epoch``."""
    return {
        "key": run.key,
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimiser": run.optimiser.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "best_state": record.best_state,
        "best_auc": record.best_auc,
        "best_epoch": record.best_epoch,
        "history": record.history,
    }


def _result(run: _Run, record: _Record, epoch: int) -> FitResult:
    """The model to keep: the best epoch's weights, or the last epoch's (``select = "last"``)."""
    model, history = run.model, record.history
    if run.settings.select == "last" and history:
        # the model as the last epoch left it (already loaded; a resumed run loaded it)
        last = record.history[-1]
        model.eval()
        return FitResult(
            model, float(last["val_auc"]), int(last["epoch"]), epoch + 1, record.history
        )
    model.load_state_dict(record.best_state)
    model.eval()
    return FitResult(
        model, float(record.best_auc), record.best_epoch + 1, epoch + 1, record.history
    )


def training_targets(
    labels: npt.ArrayLike, soft: npt.ArrayLike | None, settings: TrainSettings
) -> npt.NDArray[np.float64]:
    """The targets of training: the labels, or the true probabilities where known and asked for."""
    y = np.asarray(labels, dtype=np.float64)
    if not settings.soft_targets or soft is None:
        return y
    p = np.asarray(soft, dtype=np.float64)
    return np.where(np.isfinite(p), p, y)


def learning_rate(settings: TrainSettings, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): constant, or a half cosine to 0 over the run."""
    if settings.schedule == "constant":
        return settings.lr
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(settings.epochs, 1)))


def write_curve(path: Path, history: list[dict[str, float]]) -> None:
    """The learning curve as CSV, one row per epoch (replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    columns = ["epoch", "loss", "val_auc", "seconds", "lr"]
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def inner_split(
    labels: npt.ArrayLike, fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Stratified (train, validation) indices with ``fraction`` of each class in validation."""
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for cls in (0, 1):
        members = rng.permutation(np.nonzero(y == cls)[0])
        val.extend(int(i) for i in members[: max(1, round(fraction * len(members)))])
    val_idx = np.sort(np.array(val, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx, val_idx
