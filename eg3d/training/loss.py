"""The EG3D losses, one method per training phase: Gmain, Greg (density), Dmain, Dreg (lazy R1).

Non-saturating logistic loss; R1 at both of D's inputs on reals (the final and the raw image as D
receives them: blurred, and augmented when augmentation is on); density regularization as an L1
between densities at random points and slightly perturbed copies. Every schedule is a
function of images seen (`Schedule`, eg3d.training.schedules), so a resume continues exactly.
"""

import math

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


class EG3DLoss:
    """Each phase method computes its loss and hands it to `self.backward` (plain autograd by default;
    the trainer routes it through the distributed backend, which may scale or hook it)."""

    def __init__(self, G, D, config: TrainConfig, stats: StatsReporter, augment: AugmentPipe | None = None):
        self.G, self.D, self.config, self.stats = G, D, config, stats
        self.augment = augment or AugmentPipe(p=0.0)
        self.backward = torch.Tensor.backward
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

    def g_main(self, gen_z, gen_c, schedule: Schedule, gain: float):
        logits = self.run_D(self.run_G(gen_z, gen_c, schedule), gen_c, schedule)
        loss = F.softplus(-logits)
        self._report_scores("fake", logits)
        self.stats.report("loss/G", loss)
        self.backward(loss.mean().mul(gain))

    def g_density(self, gen_z, gen_c, schedule: Schedule, gain: float):
        cfg = self.config.loss
        ws = self.G.map(gen_z, swap_conditioning(gen_c, schedule.gpc_prob, whole_batch=True))
        points = torch.rand(len(ws), cfg.density_reg_points, 3, device=ws.device) * 2 - 1
        perturbed = points + torch.randn_like(points) * cfg.density_reg_perturbation
        sigma = self.G.density(ws, torch.cat([points, perturbed], dim=1))
        loss = F.l1_loss(sigma[:, :cfg.density_reg_points], sigma[:, cfg.density_reg_points:]) * cfg.density_reg
        self.stats.report("loss/density_reg", loss)
        self.backward(loss.mul(gain))

    def d_main(self, real_img, real_c, gen_z, gen_c, schedule: Schedule, gain: float):
        with torch.no_grad():
            fake = self.run_G(gen_z, gen_c, schedule, update_w_avg=True)
        logits_fake = self.run_D(fake, gen_c, schedule)
        self._report_scores("fake", logits_fake)
        loss_fake = F.softplus(logits_fake)
        self.backward(loss_fake.mean().mul(gain))
        logits_real = self.run_D(self.real_images(real_img, schedule), real_c, schedule)
        self._report_scores("real", logits_real)
        loss_real = F.softplus(-logits_real)
        self.stats.report("loss/D", loss_fake + loss_real)
        self.backward(loss_real.mean().mul(gain))

    def d_r1(self, real_img, real_c, schedule: Schedule, gain: float):
        # The gradient is taken at D's input, as in the reference: after blur and augmentation.
        inputs = [x.detach().requires_grad_(True)
                  for x in self.discriminator_inputs(self.real_images(real_img, schedule), schedule)]
        with eager():  # even under run.compile: compiled graphs have no double backward
            logits = self.D(*inputs, real_c)
        self._report_scores("real", logits)
        grad_image, grad_raw = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
        penalty = grad_image.square().sum(dim=[1, 2, 3]) + grad_raw.square().sum(dim=[1, 2, 3])
        loss = penalty * (self.config.loss.r1_gamma / 2)
        self.stats.report("loss/r1_penalty", penalty)
        self.stats.report("loss/D_r1", loss)
        self.backward(loss.mean().mul(gain))

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
