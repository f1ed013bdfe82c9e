"""The EG3D losses, one method per training phase: Gmain, Greg (density regularization), Dmain, Dreg (lazy R1).

Non-saturating logistic loss; R1 at both of D's inputs on reals (the final and the raw image as D
receives them: blurred, and augmented when augmentation is on); density regularization as an L1
between densities at random points and slightly perturbed copies. Every schedule is a
function of images seen (`Schedule`, eg3d.training.schedules), so a resume continues exactly.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from eg3d.config import TrainConfig
from eg3d.networks.layers import resize, upfirdn2d

from .augment import AugmentPipe
from .compilation import eager
from .schedules import Schedule
from .stats import StatsReporter


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images [N, C, H, W] (standard deviation `sigma` pixels, radius 3 sigma, zero
    padded, same size out); identity below 1/3 pixel. Separable: one 1D pass per axis, 2 (2r + 1) taps a
    pixel instead of (2r + 1)^2."""
    radius = int(math.floor(sigma * 3))
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return upfirdn2d(images, taps / taps.sum(), pad=(radius, radius))


def swap_conditioning(c: torch.Tensor, prob: float | None, *, whole_batch: bool = False) -> torch.Tensor:
    """Generator pose conditioning: with probability `prob` condition a sample on another sample's camera
    (the previous one in the micro-batch). One draw per sample, or with `whole_batch` one draw for the
    whole micro-batch (all swapped or none), as the reference does in its density phase."""
    if prob is None:
        return c
    swapped = torch.roll(c, 1, dims=0)
    draws = torch.rand([] if whole_batch else [len(c), 1], device=c.device)
    return torch.where(draws < prob, swapped, c)


@dataclass(frozen=True)
class PhaseInputs:
    """One micro-batch of a phase: what every phase method of `EG3DLoss` receives (each reads what it needs)."""

    real_img: torch.Tensor  # [n, 3, H, W] in [-1, 1]
    real_c: torch.Tensor  # [n, 25], the real images' cameras
    gen_z: torch.Tensor  # [n, z_dim], latent codes of the fakes
    gen_c: torch.Tensor  # [n, 25], cameras of the fakes
    schedule: Schedule
    gain: float  # the weight of its mean loss: n x world size / global batch, x the phase's interval


# What a phase method hands each loss to: it backpropagates the loss, accumulating into `.grad`
# (`torch.Tensor.backward`, or the trainer's gradient sync, which may scale or hook it).
Backward = Callable[[torch.Tensor], None]


class EG3DLoss:
    """The phase methods, all `(inputs: PhaseInputs, backward: Backward) -> None`: each computes its phase's
    loss on one micro-batch, reports it, and hands it, weighted by `inputs.gain`, to `backward`."""

    def __init__(self, G, D, config: TrainConfig, stats: StatsReporter, augment: AugmentPipe | None = None):
        self.G, self.D, self.config, self.stats = G, D, config, stats
        self.augment = augment or AugmentPipe(p=0.0)
        self._real_signs: list[torch.Tensor] = []  # (sum, count) of D's real logit signs, for ADA

    def run_G(self, z, c, schedule: Schedule, update_w_avg: bool = False) -> dict:
        ws = self.G.map(z, swap_conditioning(c, schedule.gpc_prob), update_w_avg=update_w_avg)
        return self.G.synthesis(ws, c, neural_rendering_resolution=schedule.neural_rendering_resolution)

    def discriminator_inputs(self, images: dict, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, image_raw) as D receives them. The reference's run_D blurs the final image first, then
        augments it together with the raw image; the raw image is not blurred here (see real_images)."""
        image = gaussian_blur(images["image"], schedule.blur_sigma)
        return self.augment.pair(image, images["image_raw"])

    def run_D(self, images: dict, c, schedule: Schedule) -> torch.Tensor:
        return self.D(*self.discriminator_inputs(images, schedule), c)

    def real_images(self, real_img, schedule: Schedule) -> dict:
        raw = resize(real_img, schedule.neural_rendering_resolution)
        if self.config.loss.blur_raw_target:
            raw = gaussian_blur(raw, schedule.blur_sigma)
        return {"image": real_img, "image_raw": raw}

    def g_main(self, inputs: PhaseInputs, backward: Backward) -> None:
        """Gmain: the non-saturating loss of D's logits on fakes."""
        schedule = inputs.schedule
        logits = self.run_D(self.run_G(inputs.gen_z, inputs.gen_c, schedule), inputs.gen_c, schedule)
        loss = F.softplus(-logits)
        self._report_scores("fake", logits)
        self.stats.report("loss/G", loss)
        backward(loss.mean().mul(inputs.gain))

    def g_density_reg(self, inputs: PhaseInputs, backward: Backward) -> None:
        """Greg: density regularization, the L1 between densities at random points and perturbed copies."""
        cfg = self.config.loss
        ws = self.G.map(inputs.gen_z, swap_conditioning(inputs.gen_c, inputs.schedule.gpc_prob, whole_batch=True))
        points = torch.rand(len(ws), cfg.density_reg_points, 3, device=ws.device) * 2 - 1
        perturbed = points + torch.randn_like(points) * cfg.density_reg_perturbation
        sigma = self.G.density(ws, torch.cat([points, perturbed], dim=1))
        loss = F.l1_loss(sigma[:, :cfg.density_reg_points], sigma[:, cfg.density_reg_points:]) * cfg.density_reg
        self.stats.report("loss/density_reg", loss)
        backward(loss.mul(inputs.gain))

    def d_main(self, inputs: PhaseInputs, backward: Backward) -> None:
        """Dmain: the logistic loss of D on fakes, then on reals (two backward passes)."""
        schedule = inputs.schedule
        with torch.no_grad():
            fake = self.run_G(inputs.gen_z, inputs.gen_c, schedule, update_w_avg=True)
        logits_fake = self.run_D(fake, inputs.gen_c, schedule)
        self._report_scores("fake", logits_fake)
        loss_fake = F.softplus(logits_fake)
        backward(loss_fake.mean().mul(inputs.gain))
        logits_real = self.run_D(self.real_images(inputs.real_img, schedule), inputs.real_c, schedule)
        self._report_scores("real", logits_real)
        loss_real = F.softplus(-logits_real)
        self.stats.report("loss/D", loss_fake + loss_real)
        backward(loss_real.mean().mul(inputs.gain))

    def d_r1(self, inputs: PhaseInputs, backward: Backward) -> None:
        """Dreg: the R1 penalty, gamma / 2 x the squared gradient of D's real logits at its inputs."""
        schedule = inputs.schedule
        # The gradient is taken at D's input, as in the reference: after blur and augmentation.
        d_inputs = [x.detach().requires_grad_(True)
                    for x in self.discriminator_inputs(self.real_images(inputs.real_img, schedule), schedule)]
        with eager():  # even under run.compile: compiled graphs have no double backward
            logits = self.D(*d_inputs, inputs.real_c)
        self._report_scores("real", logits)
        grad_image, grad_raw = torch.autograd.grad(logits.sum(), d_inputs, create_graph=True)
        penalty = grad_image.square().sum(dim=[1, 2, 3]) + grad_raw.square().sum(dim=[1, 2, 3])
        loss = penalty * (self.config.loss.r1_gamma / 2)
        self.stats.report("loss/r1_penalty", penalty)
        self.stats.report("loss/D_r1", loss)
        backward(loss.mean().mul(inputs.gain))

    def take_real_signs(self) -> torch.Tensor:
        """[sum, count] of the signs of D's real logits (Dmain and Dreg) since the last call."""
        signs, self._real_signs = self._real_signs, []
        return torch.stack(signs).sum(dim=0) if signs else torch.zeros(2, dtype=torch.float64)

    def _report_scores(self, kind: str, logits):
        self.stats.report(f"scores/{kind}", logits)
        self.stats.report(f"signs/{kind}", logits.sign())
        if kind == "real":
            signs = logits.detach().sign().double().flatten()
            self._real_signs.append(torch.stack([signs.sum(), torch.ones_like(signs).sum()]))
