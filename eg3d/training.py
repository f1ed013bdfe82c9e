"""The single-process training step: phases over micro-batches, optimizer steps, EMA.

The distributed layer wraps this; the trainer does not know which launcher runs it. Everything that
determines the future of a run (networks, optimizers, images seen, RNG) is in `state_dict()`.
"""

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from .config import TrainConfig
from .discriminator import DualDiscriminator
from .generator import TriPlaneGenerator
from .loss import EG3DLoss, Schedule
from .stats import StatsReporter


@dataclass
class Phase:
    name: str
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    interval: int
    run: Callable  # (real_img, real_c, gen_z, gen_c, schedule, gain) -> None, accumulates gradients


def lazy_regularized_adam(params, *, lr: float, betas: tuple[float, float], eps: float, reg_interval: int):
    """Adam whose lr and betas are corrected for a regularizer that runs every `reg_interval` steps."""
    ratio = reg_interval / (reg_interval + 1)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=eps)


def ema_beta(config: TrainConfig, nimg: int, batch_size: int) -> float:
    """Per-step EMA decay for a half-life of `ema_kimg`, ramped up over the first images."""
    ema_nimg = config.ema.ema_kimg * 1000
    if config.ema.rampup is not None:
        ema_nimg = min(ema_nimg, nimg * config.ema.rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class Trainer:
    def __init__(self, config: TrainConfig, *, camera_pool: torch.Tensor, device: torch.device | str = "cpu"):
        self.config, self.device = config, torch.device(device)
        torch.manual_seed(config.run.seed)
        self.G = TriPlaneGenerator(config.model, config.rendering).to(self.device).train()
        self.D = DualDiscriminator(config.model).to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.camera_pool = camera_pool.to(self.device, torch.float32)
        self.stats = StatsReporter()
        self.loss = EG3DLoss(self.G, self.D, config, self.stats)
        opt, loss_cfg = config.optimizer, config.loss
        self.opt_G = lazy_regularized_adam(self.G.parameters(), lr=opt.g_lr, betas=opt.betas, eps=opt.eps,
                                           reg_interval=loss_cfg.density_reg_interval)
        self.opt_D = lazy_regularized_adam(self.D.parameters(), lr=opt.d_lr, betas=opt.betas, eps=opt.eps,
                                           reg_interval=loss_cfg.r1_interval)
        self.phases = [
            Phase("Gmain", self.G, self.opt_G, 1, lambda r, rc, z, c, s, g: self.loss.g_main(z, c, s, g)),
            Phase("Dmain", self.D, self.opt_D, 1, self.loss.d_main),
            Phase("Dreg", self.D, self.opt_D, loss_cfg.r1_interval, lambda r, rc, z, c, s, g: self.loss.d_r1(r, rc, s, g)),
        ]
        if loss_cfg.density_reg > 0:
            self.phases.insert(1, Phase("Greg", self.G, self.opt_G, loss_cfg.density_reg_interval,
                                        lambda r, rc, z, c, s, g: self.loss.g_density(z, c, s, g)))
        self.nimg = 0
        self.step_index = 0
        self.skipped_steps = {"G": 0, "D": 0}

    @property
    def schedule(self) -> Schedule:
        return Schedule.at(self.config, self.nimg)

    def sample_cameras(self, n: int) -> torch.Tensor:
        """Generator cameras drawn from the dataset labels, as in the paper."""
        return self.camera_pool[torch.randint(len(self.camera_pool), (n,), device=self.device)]

    def train_step(self, real_img: torch.Tensor, real_c: torch.Tensor) -> None:
        """One iteration over a batch: every due phase, then EMA. real_img in [-1, 1], NCHW."""
        schedule, batch = self.schedule, len(real_img)
        micro = self.config.run.micro_batch or batch
        for phase in self.phases:
            if self.step_index % phase.interval:
                continue
            gen_z = torch.randn(batch, self.config.model.z_dim, device=self.device)
            gen_c = self.sample_cameras(batch)
            self.G.requires_grad_(phase.network is self.G)
            self.D.requires_grad_(phase.network is self.D)
            phase.optimizer.zero_grad(set_to_none=True)
            for s in range(0, batch, micro):  # gradients of the batch mean, however it is split
                part = slice(s, s + micro)
                phase.run(real_img[part], real_c[part], gen_z[part], gen_c[part], schedule,
                          phase.interval * min(micro, batch - s) / batch)
            self._optimizer_step(phase)
        self.G.requires_grad_(False)
        self.D.requires_grad_(False)
        self._update_ema(batch)
        self.nimg += batch
        self.step_index += 1

    def _optimizer_step(self, phase: Phase) -> None:
        grads = [p.grad for p in phase.network.parameters() if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        key = phase.name[0]
        if finite:
            phase.optimizer.step()
        else:  # skip the update and count it rather than sanitizing gradients
            self.skipped_steps[key] += 1
        self.stats.report(f"nonfinite_steps/{key}", 0.0 if finite else 1.0)

    @torch.no_grad()
    def _update_ema(self, batch_size: int) -> None:
        beta = ema_beta(self.config, self.nimg, batch_size)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        state = {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "nimg": self.nimg, "step_index": self.step_index, "skipped_steps": dict(self.skipped_steps),
            "torch_rng": torch.get_rng_state(), "config": self.config.to_dict(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.nimg, self.step_index = state["nimg"], state["step_index"]
        self.skipped_steps = dict(state["skipped_steps"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
