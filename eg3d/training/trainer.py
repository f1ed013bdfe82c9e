"""The training step of one worker: phases over micro-batches, optimizer steps, EMA.

The trainer does not know which launcher runs it. How gradients are accumulated, reduced across
workers and applied is the job of its `GradientSync` (`SingleProcess` here; DDP and DeepSpeed in
`cluster.backends`). Everything that determines the future of a run (networks, optimizers, images seen)
is in `state_dict()`. The global batch is split over the workers by `BatchSplit` (eg3d.config), possibly
unevenly; every micro-batch's loss is weighted by its share of the global batch. All randomness of a
step is seeded from (seed, step, phase, index in the global batch): latents and cameras per image, the
noise inside the networks per micro-batch from its first image. So a step draws the same latents,
cameras and noise on any number of workers that cut the global batch into the same micro-batches
(always, when run.micro_batch is the minibatch-std group, as in the paper's presets), and a resumed
run continues exactly.

A step does not wait for a GPU: whether a phase's gradients are finite is a flag on the device, which fused
Adam obeys in its kernel; the statistics, the skip counts and the EMA's condition stay there too. What the
host reads (ADA's signal every augment.interval steps, the statistics and the non-finite counts at log and
checkpoint time) is marked "sync point"; docs/performance.md lists them.
"""

import abc
import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.profiler import record_function

from eg3d.config import TrainConfig, batch_split
from eg3d.config.seeds import step_seed
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator

from .augment import AugmentPipe, adjust_p, host_to_device
from .compilation import compile_networks, compiled_graphs
from .loss import Backward, EG3DLoss, PhaseInputs
from .optimizer_state import torch_optimizer_state
from .schedules import Schedule
from .stats import StatsReporter, Stopwatch


# Each phase's forward and backward passes, its optimizer step and the EMA update run under
# `record_function` labels starting with this, so that a torch.profiler trace (bench/train_step.py
# --profile) shows where a step's time goes. Outside a profiler a label costs ~15 us (measured on a CPU),
# nine of them per step: nothing beside a step's 100 ms or more.
PROFILER_LABEL = "eg3d/"
# Where Adam runs fused: one kernel for all of a network's parameters, which skips a non-finite phase on the
# device. The CPU keeps torch's default Adam and its results, bit for bit.
FUSED_ADAM_DEVICES = ("cuda",)


@dataclass
class Phase:
    name: str  # Gmain, Greg, Dmain or Dreg
    network: torch.nn.Module  # the network it trains
    optimizer: torch.optim.Optimizer
    interval: int  # runs at the steps that are a multiple of this
    loss: Callable[[PhaseInputs, Backward], None]  # its EG3DLoss method, run on each micro-batch
    low_precision: bool = True  # under run.precision's autocast; False: always float32


@dataclass(frozen=True)
class NonfiniteSteps:
    """The non-finite counts as `Trainer.read_nonfinite` reads them from the device."""

    skipped_steps: dict[str, int]  # phases skipped so far, per network "G" and "D"
    streak: int  # consecutive steps up to now with a skipped phase or non-finite networks
    longest_streak: int  # the longest such streak that reached into the steps since the previous read
    longest_streak_end: int  # the index of its last step (-1: none)


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`tensors` end to end as one vector (a copy)."""
    return torch.cat([t.detach().flatten() for t in tensors])


def unflatten_into(tensors: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy `flat` (`flatten`'s layout) into `tensors`, in place."""
    parts = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(tensors, [part.view_as(t) for part, t in zip(parts, tensors)])


@torch.no_grad()
def gradient_norm(network: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all of a network's gradients together (this rank's, as accumulated so far)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


@torch.no_grad()
def gradients_finite(network: torch.nn.Module) -> torch.Tensor:
    """Whether all of a network's gradients are finite (this rank's, as accumulated so far): a [] bool tensor
    on the network's device."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool, device=next(network.parameters()).device)
    return torch.stack([torch.isfinite(g).all() for g in grads]).all()


class GradientSync(abc.ABC):
    """How the workers' gradients become one update, and the collectives the training loop needs besides.

    For each due phase the trainer calls `zero_grad`, then `backward` for every loss of every micro-batch,
    then `reduce_gradients`, `all_ranks_finite`, and `optimizer_step` (with fused Adam, which skips on the
    device when a gradient is not finite; else only when all are finite, and `zero_grad` again when not).
    Every rank calls each method except `backward` at the same point, in the same order. The
    gradient handling defaults to plain torch (autograd, the torch optimizer); `SingleProcess` is the sync
    of one process, `cluster.backends` has those of DDP and DeepSpeed.
    """

    rank: int  # this worker, 0 .. world_size - 1
    world_size: int
    optimizer_sharded = False  # True: each rank holds part of the optimizer state (ZeRO)

    @abc.abstractmethod
    def setup(self, trainer: "Trainer") -> None:
        """Called once the trainer's networks, optimizers and starting weights exist, before its first step:
        make the starting weights the same on every rank (and wrap what the backend wraps)."""

    def backward(self, phase: Phase, loss: torch.Tensor) -> None:
        """Backpropagate one loss of a micro-batch of `phase`, adding to the gradients accumulated so far.
        They stay this rank's own until `reduce_gradients` or `optimizer_step`."""
        loss.backward()

    @abc.abstractmethod
    def reduce_gradients(self, phase: Phase) -> None:
        """After the phase's last backward: make the gradients of its network the mean over ranks, or leave
        that to `optimizer_step` (which must then reduce before it applies)."""

    def all_ranks_finite(self, phase: Phase) -> torch.Tensor:
        """Whether every gradient of the phase's network is finite on every rank: a [] bool tensor on the
        network's device, the same on every rank, so that all of them apply the phase or all skip it. One
        all-reduce of one number, on the device: the host reads nothing."""
        nonfinite = (~gradients_finite(phase.network)).float().reshape(1)
        return self.all_reduce_sum(nonfinite)[0] == 0

    def optimizer_step(self, phase: Phase) -> None:
        """Apply the phase's (reduced) gradients with its optimizer."""
        phase.optimizer.step()

    def zero_grad(self, phase: Phase) -> None:
        """Clear the gradients the phase's network has accumulated. Here: set them to None, so that a parameter
        the phase does not reach keeps none, and Adam leaves it and its moments alone."""
        phase.optimizer.zero_grad(set_to_none=True)

    @abc.abstractmethod
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over ranks, on `tensor`'s device. One process may return `tensor`
        itself, so do not change the result in place."""

    @abc.abstractmethod
    def all_gather_object(self, value) -> list:
        """Every rank's picklable `value`, in rank order."""

    @abc.abstractmethod
    def broadcast_object(self, value):
        """Rank 0's picklable `value`, on every rank (the others' `value` is ignored)."""

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        """This rank's state of `optimizer` for a checkpoint: all of it, or this rank's shard when
        `optimizer_sharded`."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, states: list[dict]) -> None:
        """`states`: the saved state of every rank (one entry unless the state is sharded), in either backend's
        form (see eg3d.training.optimizer_state)."""
        optimizer.load_state_dict(torch_optimizer_state(states, optimizer))


class SingleProcess(GradientSync):
    """One process: its gradients are already the mean, and every collective returns its input."""

    rank, world_size = 0, 1

    def setup(self, trainer: "Trainer") -> None:
        pass

    def reduce_gradients(self, phase: Phase) -> None:
        pass

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_object(self, value) -> list:
        return [value]

    def broadcast_object(self, value):
        return value


def lazy_regularized_adam(params, *, lr: float, betas: tuple[float, float], eps: float, reg_interval: int,
                          fused: bool = False):
    """Adam whose lr and betas are corrected for a regularizer that runs every `reg_interval` steps; `fused`:
    torch's fused Adam (see `step_if_finite`), else its default."""
    return torch.optim.Adam(params, **lazy_regularized_hyperparameters(lr=lr, betas=betas, eps=eps,
                                                                      reg_interval=reg_interval),
                            fused=fused or None)


def lazy_regularized_hyperparameters(*, lr: float, betas: tuple[float, float], eps: float, reg_interval: int) -> dict:
    ratio = reg_interval / (reg_interval + 1)
    return {"lr": lr * ratio, "betas": (betas[0] ** ratio, betas[1] ** ratio), "eps": eps}


def step_if_finite(sync: GradientSync, phase: Phase, finite: torch.Tensor) -> None:
    """The phase's optimizer step where `finite` ([] bool, on the device) holds; otherwise its weights and Adam's
    state stay as they were. Fused Adam skips inside its kernel when told `found_inf` (as a GradScaler tells
    it), so the host reads nothing; a first step skipped so leaves Adam's state as a fresh Adam's (step 0, zero
    moments). torch's default Adam cannot skip by itself, so the flag is read: it runs on the CPU, which has
    no queue of work to wait for."""
    optimizer = phase.optimizer
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            sync.optimizer_step(phase)
        finally:
            del optimizer.found_inf
    elif finite.item():  # sync point on a GPU; the default Adam runs on the CPU (FUSED_ADAM_DEVICES)
        sync.optimizer_step(phase)
    else:
        sync.zero_grad(phase)


def ema_beta(config: TrainConfig, nimg: int, batch_size: int) -> float:
    """Per-step EMA decay for a half-life of `ema_kimg`, ramped up over the first images."""
    ema_nimg = config.ema.ema_kimg * 1000
    if config.ema.rampup is not None:
        ema_nimg = min(ema_nimg, nimg * config.ema.rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class Trainer:
    """`networks`: starting weights {"G", "D", "G_ema"} (state dicts; "D" None: freshly initialized), loaded
    before the gradient sync's setup (DeepSpeed copies the weights it optimizes there)."""

    def __init__(self, config: TrainConfig, *, camera_pool: torch.Tensor, device: torch.device | str = "cpu",
                 sync: GradientSync | None = None, networks: dict | None = None):
        self.config, self.device = config, torch.device(device)
        self.sync = sync or SingleProcess()
        self.split = batch_split(config, self.sync.world_size)
        torch.manual_seed(config.run.seed)  # the same initial networks on every rank
        self.G = TriPlaneGenerator(config.model, config.rendering).to(self.device).train()
        self.D = DualDiscriminator(config.model).to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.camera_pool = camera_pool.to(self.device, torch.float32)
        self.stats = StatsReporter()
        self.augment = AugmentPipe(p=self._configured_p())
        # ADA's signal: [sum, count] of this rank's D real logit signs since the last adjustment (on the device);
        # the sum over ranks is the signal (see _adapt_augmentation, gather_augment_signs).
        self.augment_signs = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.loss = EG3DLoss(self.G, self.D, config, self.stats, self.augment)
        loss_cfg = config.loss
        fused = self.device.type in FUSED_ADAM_DEVICES
        self.opt_G = lazy_regularized_adam(self.G.parameters(), **self._optimizer_settings("G"), fused=fused)
        self.opt_D = lazy_regularized_adam(self.D.parameters(), **self._optimizer_settings("D"), fused=fused)
        # The phases in the order they run; a phase's index in this list seeds its randomness.
        self.phases = [Phase("Gmain", self.G, self.opt_G, interval=1, loss=self.loss.g_main)]
        if loss_cfg.density_reg > 0:
            # Always float32: the regularizer is a finite difference of densities at points a small step
            # apart, which bf16's rounding swamps (its gradient lost its direction in tests/test_gpu.py);
            # the reference runs the tri-plane backbone and decoder in float32 throughout.
            self.phases.append(Phase("Greg", self.G, self.opt_G, interval=loss_cfg.density_reg_interval,
                                     loss=self.loss.g_density_reg, low_precision=False))
        self.phases += [
            Phase("Dmain", self.D, self.opt_D, interval=1, loss=self.loss.d_main),
            # R1 is the gradient of a gradient norm: under bf16 its gradient drifted (cosine 0.989 against
            # float32 on D's blocks in tests/test_gpu.py), so it runs in float32, 1 step in r1_interval.
            Phase("Dreg", self.D, self.opt_D, interval=loss_cfg.r1_interval, loss=self.loss.d_r1,
                  low_precision=False),
        ]
        self.nimg = 0
        self.step_index = 0
        # On the device, read at log and checkpoint time (read_nonfinite): the phases skipped per network, the
        # consecutive steps up to now with a skipped phase (see train_step), and the longest such streak since
        # the last read with the index of its last step.
        counter = functools.partial(torch.zeros, (), dtype=torch.int64, device=self.device)
        self._skipped = {"G": counter(), "D": counter()}
        self._streak, self._longest_streak, self._longest_streak_end = counter(), counter(), counter() - 1
        self.compile_seconds = 0.0  # time of the phases that compiled graphs (run.compile), kept out of step time
        for name, state in (networks or {}).items():
            if state is not None:
                getattr(self, name).load_state_dict(state)
        self.sync.setup(self)
        if config.run.compile:
            compile_networks(self.G, self.D)

    def _configured_p(self) -> float:
        return self.config.augment.p if self.config.augment.kind != "none" else 0.0

    def _optimizer_settings(self, network: str) -> dict:
        """The config's settings for `lazy_regularized_adam` of "G" or "D"."""
        opt, loss = self.config.optimizer, self.config.loss
        lr, reg_interval = (opt.g_lr, loss.density_reg_interval) if network == "G" else (opt.d_lr, loss.r1_interval)
        return {"lr": lr, "betas": opt.betas, "eps": opt.eps, "reg_interval": reg_interval}

    @property
    def schedule(self) -> Schedule:
        return Schedule.at(self.config, self.nimg)

    def autocast(self, phase: Phase):
        if self.config.run.precision == "bf16" and phase.low_precision:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def phase_latents(self, phase_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch of latent codes [share, z_dim] and generator cameras
        [share, 25] for a phase: drawn for the whole global batch, so image i gets the same on any split."""
        generator = torch.Generator().manual_seed(step_seed(self.config.run.seed, self.step_index, phase_index))
        total, first = self.split.global_batch, self.split.offset(self.sync.rank)
        z = torch.randn(total, self.config.model.z_dim, generator=generator)
        cameras = torch.randint(len(self.camera_pool), (total,), generator=generator)
        mine = slice(first, first + self.split.shares[self.sync.rank])
        return host_to_device(z[mine], self.device), self.camera_pool[host_to_device(cameras[mine], self.device)]

    def train_step(self, real_img: torch.Tensor, real_c: torch.Tensor) -> None:
        """One iteration over this rank's share of the global batch: every due phase, then EMA.

        real_img: [share, 3, H, W] in [-1, 1]; real_c: [share, 25], where share is
        `self.split.shares[rank]` (ValueError otherwise). The loss of a micro-batch of n images is its mean
        weighted by n x world_size / global batch, and the sync averages over ranks, so every image
        weighs 1 / global batch however unevenly the batch is split: the step follows the gradient of the
        global batch mean.
        A phase whose gradients are not finite is skipped whole: its weights, its optimizer state and G's
        buffers stay as they were before it. A step with a skipped phase (or whose networks are no longer
        finite) leaves G_ema alone and extends `nonfinite_streak`; a fully finite step resets it. Images
        seen and the step index advance either way (the batch was drawn, and the schedules go on).
        All of this is decided on the device: with fused Adam the step reads nothing on the host, except
        ADA's signal every augment.interval steps (`_adapt_augmentation`).
        """
        split, rank = self.split, self.sync.rank
        if len(real_img) != split.shares[rank] or len(real_c) != split.shares[rank]:
            raise ValueError(f"rank {rank}: expected its share of {split.shares[rank]} images and cameras "
                             f"({split.describe()}), got {len(real_img)} and {len(real_c)}")
        schedule, buffers = self.schedule, self._float_buffers()
        buffers_before = flatten(buffers) if self.sync.world_size > 1 else None
        all_phases_finite = torch.ones((), dtype=torch.bool, device=self.device)
        for phase_index, phase in enumerate(self.phases):
            if self.step_index % phase.interval == 0:
                all_phases_finite &= self._run_phase(phase_index, real_img, real_c, schedule, buffers)
        self.G.requires_grad_(False)
        self.D.requires_grad_(False)
        self._sync_buffers(buffers, buffers_before)
        # A finite gradient can still overflow a weight (an absurd learning rate), so the networks are
        # checked too (they are the same on every rank). G_ema follows fully finite steps only.
        step_finite = all_phases_finite & self._networks_finite(buffers)
        with record_function(f"{PROFILER_LABEL}ema"):
            self._update_ema(split.global_batch, step_finite)
        self._count_streak(step_finite)
        self.nimg += split.global_batch
        self.step_index += 1
        self._adapt_augmentation()
        self.stats.add("images", split.shares[rank])
        self.stats.add("steps", 1)

    def _run_phase(self, phase_index: int, real_img: torch.Tensor, real_c: torch.Tensor, schedule: Schedule,
                   buffers: list[torch.Tensor]) -> torch.Tensor:
        """One phase: its gradients, then its update where they are finite on every rank; that flag ([] bool, on
        the device). `buffers`: G's floating buffers, put back as they were when the phase is skipped."""
        phase = self.phases[phase_index]
        stopwatch, graphs_before = Stopwatch(self.device), compiled_graphs()
        # G's tracked mean w moves in G's forward passes (Dmain's fakes included): a skipped phase
        # must leave it as it was, like the weights and optimizer state it does not update.
        buffers_before = flatten(buffers)
        with record_function(f"{PROFILER_LABEL}phase/{phase.name}"):
            self.accumulate_gradients(phase_index, real_img, real_c, schedule)
        with record_function(f"{PROFILER_LABEL}optimizer/{phase.name}"):
            finite = self._optimizer_step(phase)
        with torch.no_grad():
            unflatten_into(buffers, torch.where(finite, flatten(buffers), buffers_before))
        if self.device.type == "cuda" and torch.autograd._profiler_enabled():
            torch.cuda.synchronize(self.device)  # sync point, under a profiler only: its labels then span the kernels
        self._add_phase_time(phase, stopwatch.stop(), compiled_graphs() - graphs_before)
        return finite

    def accumulate_gradients(self, phase_index: int, real_img: torch.Tensor, real_c: torch.Tensor,
                             schedule: Schedule) -> None:
        """The forward and backward passes of one phase over this rank's micro-batches: its network's
        gradients, zeroed first, hold the phase's loss gradient afterwards (not yet reduced or applied)."""
        phase, split, rank = self.phases[phase_index], self.split, self.sync.rank
        gen_z, gen_c = self.phase_latents(phase_index)
        self.G.requires_grad_(phase.network is self.G)
        self.D.requires_grad_(phase.network is self.D)
        self.sync.zero_grad(phase)
        backward = functools.partial(self.sync.backward, phase)
        first = split.offset(rank)
        starts = np.cumsum((0,) + split.micro_batches(rank)[:-1]).tolist()
        for start, size in zip(starts, split.micro_batches(rank)):
            part = slice(start, start + size)
            inputs = PhaseInputs(real_img[part], real_c[part], gen_z[part], gen_c[part], schedule,
                                 gain=phase.interval * size * split.world_size / split.global_batch)
            torch.manual_seed(step_seed(self.config.run.seed, self.step_index, phase_index, first + start))
            with self.autocast(phase):
                phase.loss(inputs, backward)

    def _add_phase_time(self, phase: Phase, stopwatch: Stopwatch, new_graphs: int) -> None:
        """A phase that compiled graphs (its first run at a new shape, under run.compile) counts as compile
        time (the host's), so that seconds/<phase> stays the time of a compiled step."""
        if new_graphs:
            self.compile_seconds += stopwatch.wall_seconds
            self.stats.add("compile/seconds", stopwatch.wall_seconds)
            self.stats.add("compile/graphs", new_graphs)
        else:
            self.stats.add_time(f"seconds/{phase.name}", stopwatch)

    def _adapt_augmentation(self) -> None:
        """ADA: every `interval` steps, move p by the sign of (mean sign of D's real logits - target).
        Each rank sums its signs on the device; at an adjustment the sums of all ranks are added up and
        read, so every rank holds the same signal and p."""
        cfg, signs = self.config.augment, self.loss.take_real_signs()
        if cfg.kind == "ada":
            self.augment_signs += signs.to(self.device)
            if self.step_index % cfg.interval == 0:
                total, count = self.sync.all_reduce_sum(self.augment_signs).tolist()  # sync point, per adjustment
                if count > 0:
                    signal = total / count
                    self.augment.p = adjust_p(self.augment.p, signal, target=cfg.target,
                                              images=self.split.global_batch * cfg.interval, ada_kimg=cfg.ada_kimg)
                    self.augment_signs.zero_()
                    self.stats.report("augment/rt", signal)
        self.stats.report("augment/p", self.augment.p)

    def gather_augment_signs(self) -> None:
        """Hand every rank's ADA signs since the last adjustment to rank 0, whose `state_dict` then holds the
        signal (their sum) for a checkpoint taken between two adjustments. A collective: every rank calls it."""
        total = self.sync.all_reduce_sum(self.augment_signs)
        self.augment_signs = total.clone() if self.sync.rank == 0 else torch.zeros_like(total)

    def _optimizer_step(self, phase: Phase) -> torch.Tensor:
        """Reduce and apply the phase's gradients; the flag ([] bool, on the device) of whether they were all
        finite on every rank, a decision every rank takes alike: when not, nothing is applied (`step_if_finite`)
        and the skip is counted."""
        self.stats.report(f"grad_norm/{phase.name}", gradient_norm(phase.network))
        self.sync.reduce_gradients(phase)
        finite = self.sync.all_ranks_finite(phase)
        step_if_finite(self.sync, phase, finite)
        key, skipped = phase.name[0], ~finite
        self._skipped[key] += skipped
        self.stats.report(f"nonfinite_steps/{key}", skipped.float())
        self.stats.add(f"skipped_steps/{key}", skipped.float())
        return finite

    def _float_buffers(self) -> list[torch.Tensor]:
        """G's floating buffers (the tracked mean w among them); D keeps no running state."""
        return [b for b in self.G.buffers() if b.is_floating_point()]

    @torch.no_grad()
    def _networks_finite(self, buffers: list[torch.Tensor]) -> torch.Tensor:
        tensors = [*self.G.parameters(), *buffers, *self.D.parameters()]
        return torch.stack([torch.isfinite(t).all() for t in tensors]).all()

    @torch.no_grad()
    def _sync_buffers(self, buffers: list[torch.Tensor], before: torch.Tensor | None) -> None:
        """The generator's tracked mean w (for truncation) moves by the sum of every rank's moves, so it
        advances at the same rate per image (to first order) whatever the world size."""
        if before is not None:
            unflatten_into(buffers, before + self.sync.all_reduce_sum(flatten(buffers) - before))

    @torch.no_grad()
    def _update_ema(self, batch_size: int, step_finite: torch.Tensor) -> None:
        """G_ema moves towards G where `step_finite` ([] bool, on the device), else stays as it was."""
        beta = ema_beta(self.config, self.nimg, batch_size)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            torch.where(step_finite, p.detach().lerp(p_ema, beta), p_ema, out=p_ema)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            torch.where(step_finite, b, b_ema, out=b_ema)

    def _count_streak(self, step_finite: torch.Tensor) -> None:
        """Extend the streak of non-finite steps, or end it, on the device; keep its longest since the last read."""
        self._streak = torch.where(step_finite, 0, self._streak + 1)
        longer = self._streak > self._longest_streak
        self._longest_streak = torch.where(longer, self._streak, self._longest_streak)
        self._longest_streak_end = torch.where(longer, self.step_index, self._longest_streak_end)

    def read_nonfinite(self) -> NonfiniteSteps:
        """The non-finite counts, read from the device (a sync point: the training loop reads them at log and
        checkpoint steps only); the next read's longest streak counts from here."""
        skipped_g, skipped_d, streak, longest, end = torch.stack(
            [self._skipped["G"], self._skipped["D"], self._streak, self._longest_streak,
             self._longest_streak_end]).tolist()
        self._longest_streak, self._longest_streak_end = torch.zeros_like(self._streak), self._streak.new_full((), -1)
        return NonfiniteSteps({"G": skipped_g, "D": skipped_d}, streak, longest, end)

    @property
    def skipped_steps(self) -> dict[str, int]:
        """The phases skipped for non-finite gradients so far, per network "G" and "D" (read from the device)."""
        return {key: count.item() for key, count in self._skipped.items()}

    @property
    def nonfinite_streak(self) -> int:
        """The consecutive steps up to now with a skipped phase or non-finite networks (read from the device)."""
        return self._streak.item()

    def state_dict(self) -> dict:
        """The state every rank shares (for sharded optimizers, see `optimizer_state_dicts`)."""
        state = {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "nimg": self.nimg, "step_index": self.step_index, "skipped_steps": self.skipped_steps,
            "nonfinite_streak": self.nonfinite_streak,
            "augment": {"p": self.augment.p, "real_signs": self.augment_signs.tolist()},
            "config": self.config.to_dict(),
        }
        if not self.sync.optimizer_sharded:
            state.update(self.optimizer_state_dicts())
        return state

    def optimizer_state_dicts(self) -> dict:
        return {"opt_G": self.sync.optimizer_state_dict(self.opt_G),
                "opt_D": self.sync.optimizer_state_dict(self.opt_D)}

    def load_state_dict(self, state: dict, optimizer_shards: list[dict] | None = None) -> None:
        """`optimizer_shards`: every rank's `optimizer_state_dicts()`, when the optimizer is sharded."""
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        shards = optimizer_shards or [state]
        self.sync.load_optimizer_state_dict(self.opt_G, [shard["opt_G"] for shard in shards])
        self.sync.load_optimizer_state_dict(self.opt_D, [shard["opt_D"] for shard in shards])
        # A saved optimizer brings its own learning rate, betas and eps; the config's win, so that a run
        # resumed with lower learning rates (after a divergence, say) trains with them.
        for optimizer, network in ((self.opt_G, "G"), (self.opt_D, "D")):
            for group in optimizer.param_groups:
                group.update(lazy_regularized_hyperparameters(**self._optimizer_settings(network)))
        self.nimg, self.step_index = state["nimg"], state["step_index"]
        for key, count in state["skipped_steps"].items():
            self._skipped[key].fill_(count)
        self._streak.fill_(state.get("nonfinite_streak", 0))  # absent from checkpoints of older versions
        # ADA continues where it was; a fixed p, or a checkpoint of an older version, takes the config's. The
        # saved signs are the sum over ranks (gather_augment_signs): rank 0 takes them.
        saved = state.get("augment") if self.config.augment.kind == "ada" else None
        self.augment.p = float(saved["p"]) if saved else self._configured_p()
        signs = saved["real_signs"] if saved and self.sync.rank == 0 else [0.0, 0.0]
        self.augment_signs = torch.tensor(signs, dtype=torch.float64, device=self.device)

