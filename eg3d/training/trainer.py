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
"""

import abc
import contextlib
import copy
import functools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.profiler import record_function

from eg3d.config import TrainConfig, batch_split
from eg3d.config.seeds import step_seed
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator

from .augment import AugmentPipe, adjust_p
from .compilation import compile_networks, compiled_graphs
from .loss import Backward, EG3DLoss, PhaseInputs
from .optimizer_state import torch_optimizer_state
from .schedules import Schedule
from .stats import StatsReporter


# Each phase's forward and backward passes, its optimizer step and the EMA update run under
# `record_function` labels starting with this, so that a torch.profiler trace (bench/train_step.py
# --profile) shows where a step's time goes. Outside a profiler a label costs ~15 us (measured on a CPU),
# nine of them per step: nothing beside a step's 100 ms or more.
PROFILER_LABEL = "eg3d/"


@dataclass
class Phase:
    name: str  # Gmain, Greg, Dmain or Dreg
    network: torch.nn.Module  # the network it trains
    optimizer: torch.optim.Optimizer
    interval: int  # runs at the steps that are a multiple of this
    loss: Callable[[PhaseInputs, Backward], None]  # its EG3DLoss method, run on each micro-batch
    low_precision: bool = True  # under run.precision's autocast; False: always float32


@torch.no_grad()
def gradient_norm(network: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all of a network's gradients together (this rank's, as accumulated so far)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


@torch.no_grad()
def gradients_finite(network: torch.nn.Module) -> bool:
    """Whether all of a network's gradients are finite (this rank's, as accumulated so far)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


class GradientSync(abc.ABC):
    """How the workers' gradients become one update, and the collectives the training loop needs besides.

    For each due phase the trainer calls `zero_grad`, then `backward` for every loss of every micro-batch,
    then `reduce_gradients`, `all_finite`, and `optimizer_step` (or `zero_grad` again when a gradient is not
    finite). Every rank calls each method except `backward` at the same point, in the same order. The
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

    @abc.abstractmethod
    def all_finite(self, phase: Phase) -> bool:
        """Whether every gradient of the phase's network is finite on every rank: the same answer on every
        rank, so that all of them apply the phase or all skip it."""

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

    def all_finite(self, phase: Phase) -> bool:
        return gradients_finite(phase.network)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_object(self, value) -> list:
        return [value]

    def broadcast_object(self, value):
        return value


def lazy_regularized_adam(params, *, lr: float, betas: tuple[float, float], eps: float, reg_interval: int):
    """Adam whose lr and betas are corrected for a regularizer that runs every `reg_interval` steps."""
    return torch.optim.Adam(params, **lazy_regularized_hyperparameters(lr=lr, betas=betas, eps=eps,
                                                                      reg_interval=reg_interval))


def lazy_regularized_hyperparameters(*, lr: float, betas: tuple[float, float], eps: float, reg_interval: int) -> dict:
    ratio = reg_interval / (reg_interval + 1)
    return {"lr": lr * ratio, "betas": (betas[0] ** ratio, betas[1] ** ratio), "eps": eps}


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
        # ADA's signal: [sum, count] of D's real logit signs since the last adjustment, over all ranks.
        self.augment_signs = torch.zeros(2, dtype=torch.float64)
        self.loss = EG3DLoss(self.G, self.D, config, self.stats, self.augment)
        loss_cfg = config.loss
        self.opt_G = lazy_regularized_adam(self.G.parameters(), **self._optimizer_settings("G"))
        self.opt_D = lazy_regularized_adam(self.D.parameters(), **self._optimizer_settings("D"))
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
        self.skipped_steps = {"G": 0, "D": 0}
        self.nonfinite_streak = 0  # consecutive steps with a skipped phase (see train_step)
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
        return z[mine].to(self.device), self.camera_pool[cameras[mine].to(self.device)]

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
        """
        split, rank = self.split, self.sync.rank
        if len(real_img) != split.shares[rank] or len(real_c) != split.shares[rank]:
            raise ValueError(f"rank {rank}: expected its share of {split.shares[rank]} images and cameras "
                             f"({split.describe()}), got {len(real_img)} and {len(real_c)}")
        schedule = self.schedule
        buffers_before = None
        if self.sync.world_size > 1:
            buffers_before = torch.cat([b.detach().flatten() for b in self._float_buffers()])
        all_phases_finite = True
        for phase_index, phase in enumerate(self.phases):
            if self.step_index % phase.interval:
                continue
            phase_start, graphs_before = time.perf_counter(), compiled_graphs()
            # G's tracked mean w moves in G's forward passes (Dmain's fakes included): a skipped phase
            # must leave it as it was, like the weights and optimizer state it does not update.
            buffers_before_phase = [b.detach().clone() for b in self._float_buffers()]
            with record_function(f"{PROFILER_LABEL}phase/{phase.name}"):
                self.accumulate_gradients(phase_index, real_img, real_c, schedule)
            with record_function(f"{PROFILER_LABEL}optimizer/{phase.name}"):
                finite = self._optimizer_step(phase)
            if not finite:
                self._restore_buffers(buffers_before_phase)
                all_phases_finite = False
            if self.device.type == "cuda":  # the phase's kernels have run, not merely been queued
                torch.cuda.synchronize(self.device)
            self._add_phase_time(phase, time.perf_counter() - phase_start, compiled_graphs() - graphs_before)
        self.G.requires_grad_(False)
        self.D.requires_grad_(False)
        self._sync_buffers(buffers_before)
        # A finite gradient can still overflow a weight (an absurd learning rate), so the networks are
        # checked too (they are the same on every rank). G_ema follows fully finite steps only.
        if all_phases_finite and self._networks_finite():
            with record_function(f"{PROFILER_LABEL}ema"):
                self._update_ema(split.global_batch)
            self.nonfinite_streak = 0
        else:
            self.nonfinite_streak += 1
        self.nimg += split.global_batch
        self.step_index += 1
        self._adapt_augmentation()
        self.stats.add("images", split.shares[rank])
        self.stats.add("steps", 1)

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

    def _add_phase_time(self, phase: Phase, seconds: float, new_graphs: int) -> None:
        """A phase that compiled graphs (its first run at a new shape, under run.compile) counts as compile
        time, so that seconds/<phase> stays the time of a compiled step."""
        if new_graphs:
            self.compile_seconds += seconds
            self.stats.add("compile/seconds", seconds)
            self.stats.add("compile/graphs", new_graphs)
        else:
            self.stats.add(f"seconds/{phase.name}", seconds)

    def _adapt_augmentation(self) -> None:
        """ADA: every `interval` steps, move p by the sign of (mean sign of D's real logits - target).
        The signs are summed over all ranks each step, so every rank holds the same signal and p, and a
        checkpoint taken between adjustments resumes exactly."""
        cfg, signs = self.config.augment, self.loss.take_real_signs()
        if cfg.kind == "ada":
            self.augment_signs += self.sync.all_reduce_sum(signs.to(self.device)).cpu()
            total, count = self.augment_signs.tolist()
            if self.step_index % cfg.interval == 0 and count > 0:
                signal = total / count
                self.augment.p = adjust_p(self.augment.p, signal, target=cfg.target,
                                          images=self.split.global_batch * cfg.interval, ada_kimg=cfg.ada_kimg)
                self.augment_signs.zero_()
                self.stats.report("augment/rt", signal)
        self.stats.report("augment/p", self.augment.p)

    def _optimizer_step(self, phase: Phase) -> bool:
        """Reduce and apply the phase's gradients; False (and nothing applied) when any is not finite
        on any rank, a decision every rank takes alike."""
        self.stats.report(f"grad_norm/{phase.name}", gradient_norm(phase.network))
        self.sync.reduce_gradients(phase)
        finite = self.sync.all_finite(phase)
        key = phase.name[0]
        if finite:
            self.sync.optimizer_step(phase)
        else:  # skip the update and count it rather than sanitizing gradients
            self.sync.zero_grad(phase)
            self.skipped_steps[key] += 1
        self.stats.report(f"nonfinite_steps/{key}", 0.0 if finite else 1.0)
        self.stats.add(f"skipped_steps/{key}", 0.0 if finite else 1.0)
        return finite

    def _float_buffers(self) -> list[torch.Tensor]:
        """G's floating buffers (the tracked mean w among them); D keeps no running state."""
        return [b for b in self.G.buffers() if b.is_floating_point()]

    @torch.no_grad()
    def _restore_buffers(self, saved: list[torch.Tensor]) -> None:
        for buffer, value in zip(self._float_buffers(), saved):
            buffer.copy_(value)

    @torch.no_grad()
    def _networks_finite(self) -> bool:
        tensors = [*self.G.parameters(), *self._float_buffers(), *self.D.parameters()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    @torch.no_grad()
    def _sync_buffers(self, before: torch.Tensor | None) -> None:
        """The generator's tracked mean w (for truncation) moves by the sum of every rank's moves, so it
        advances at the same rate per image (to first order) whatever the world size."""
        if before is None:
            return
        current = torch.cat([b.flatten() for b in self._float_buffers()])
        torch.nn.utils.vector_to_parameters(before + self.sync.all_reduce_sum(current - before),
                                            self._float_buffers())

    @torch.no_grad()
    def _update_ema(self, batch_size: int) -> None:
        beta = ema_beta(self.config, self.nimg, batch_size)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        """The state every rank shares (for sharded optimizers, see `optimizer_state_dicts`)."""
        state = {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "nimg": self.nimg, "step_index": self.step_index, "skipped_steps": dict(self.skipped_steps),
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
        self.skipped_steps = dict(state["skipped_steps"])
        self.nonfinite_streak = state.get("nonfinite_streak", 0)  # absent from checkpoints of older versions
        # ADA continues where it was; a fixed p, or a checkpoint of an older version, takes the config's.
        saved = state.get("augment") if self.config.augment.kind == "ada" else None
        self.augment.p = float(saved["p"]) if saved else self._configured_p()
        self.augment_signs = torch.tensor(saved["real_signs"] if saved else [0.0, 0.0], dtype=torch.float64)
