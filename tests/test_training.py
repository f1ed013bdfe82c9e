import copy
import io
import math

import pytest
import torch

from model_helpers import micro_config, random_cameras
from eg3d.config.presets import ffhq512, ffhq512_stage2, tiny
from eg3d.config.seeds import step_seed
from eg3d.training.augment import AugmentPipe
from eg3d.training.loss import EG3DLoss, PhaseInputs, gaussian_blur
from eg3d.training.schedules import Schedule
from eg3d.training.stats import StatsReporter
from eg3d.training.trainer import Trainer, ema_beta, lazy_regularized_adam


def real_batch(step: int, n: int = 4, resolution: int = 32):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1, random_cameras(n, seed=step)


def run_steps(trainer: Trainer, steps: range) -> list[dict]:
    history = []
    for step in steps:
        trainer.train_step(*real_batch(step))
        history.append(trainer.stats.collect())
    return history


def phase_inputs(schedule: Schedule, *, real=(None, None), gen=(None, None)) -> PhaseInputs:
    """One micro-batch for calling a phase method of EG3DLoss directly, at gain 1: (images, cameras) of the
    reals and (latents, cameras) of the fakes, left out where the phase does not read them."""
    return PhaseInputs(*real, *gen, schedule, gain=1.0)


def every_phase_config():
    return micro_config("loss.r1_interval=2", "loss.density_reg_interval=3")


def test_resume_reproduces_uninterrupted_losses_bit_for_bit():
    config = every_phase_config()
    uninterrupted = Trainer(config, camera_pool=random_cameras(32))
    expected = run_steps(uninterrupted, range(6))

    first = Trainer(config, camera_pool=random_cameras(32))
    history = run_steps(first, range(3))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(12345)  # the resumed process starts from unrelated RNG state
    resumed = Trainer(config, camera_pool=random_cameras(32))
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    history += run_steps(resumed, range(3, 6))

    assert history == expected  # every reported loss, exactly
    for (name, a), b in zip(uninterrupted.G_ema.state_dict().items(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.nimg == uninterrupted.nimg == 24


def test_all_phases_run_on_their_intervals():
    config = every_phase_config()
    trainer = Trainer(config, camera_pool=random_cameras(8))
    calls = []
    for phase in trainer.phases:
        original = phase.loss
        phase.loss = lambda *a, _name=phase.name, _orig=original: (calls.append((trainer.step_index, _name)), _orig(*a))
    run_steps(trainer, range(6))
    ran = lambda name: [s for s, n in calls if n == name]
    assert ran("Gmain") == ran("Dmain") == list(range(6))
    assert ran("Greg") == [0, 3]
    assert ran("Dreg") == [0, 2, 4]


def test_gradient_accumulation_matches_one_big_batch():
    """Micro-batches accumulate the gradient of the batch mean: 2 x 2 equals 1 x 4.

    Minibatch-std groups are per micro-batch, so group size 1 keeps the samples independent.
    """
    results = []
    for micro in ("run.micro_batch=null", "run.micro_batch=2"):
        config = micro_config("model.disc_mbstd_group=1", micro, "loss.blur_init_sigma=0")
        trainer = Trainer(config, camera_pool=random_cameras(8))
        trainer.phases = [p for p in trainer.phases if p.name == "Dreg"]  # deterministic given D and the reals
        grads = {}
        trainer.phases[0].optimizer.step = lambda: None
        img, c = real_batch(0)
        trainer.train_step(img, c)
        grads = {n: p.grad.clone() for n, p in trainer.D.named_parameters() if p.grad is not None}
        results.append(grads)
    assert results[0].keys() == results[1].keys() and results[0]
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-7, msg=name)


def test_nonfinite_gradients_skip_the_step_and_are_counted():
    config = micro_config()
    trainer = Trainer(config, camera_pool=random_cameras(8))
    before = copy.deepcopy(trainer.D.state_dict())
    img, c = real_batch(0)
    img[0, 0, 0, 0] = float("nan")  # poisons D's gradients through the real images
    trainer.phases = [p for p in trainer.phases if p.name.startswith("D")]
    trainer.train_step(img, c)
    assert trainer.skipped_steps["D"] == 2  # Dmain and Dreg both ran at step 0
    for name, value in trainer.D.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert trainer.stats.collect()["nonfinite_steps/D"] == 1.0


def test_lazy_regularization_correction():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = lazy_regularized_adam(p, lr=0.002, betas=(0.0, 0.99), eps=1e-8, reg_interval=16)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.002 * 16 / 17, rel=1e-12)
    assert group["betas"][0] == 0.0
    assert group["betas"][1] == pytest.approx(math.exp(math.log(0.99) * 16 / 17), rel=1e-12)
    config = micro_config()
    trainer = Trainer(config, camera_pool=random_cameras(4))
    assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(config.optimizer.g_lr * 4 / 5)


def test_ema_beta_half_life_and_rampup():
    config = tiny()  # batch 8: ema_kimg = 10 * 8 / 32 = 2.5
    assert config.ema.ema_kimg == 2.5
    # Past the ramp-up the half-life is 2500 images: beta ** (2500 / 8) == 0.5.
    assert ema_beta(config, 100_000, 8) ** (2500 / 8) == pytest.approx(0.5, rel=1e-9)
    # During ramp-up the half-life is 5% of the images seen: 20 000 -> 1000 images.
    assert ema_beta(config, 20_000, 8) == pytest.approx(0.5 ** (8 / 1000), rel=1e-12)
    assert ema_beta(config, 0, 8) == 0.0


def test_ema_update_arithmetic():
    trainer = Trainer(micro_config(), camera_pool=random_cameras(4))
    trainer.nimg = 100_000
    with torch.no_grad():
        for p in trainer.G.parameters():
            p.add_(1.0)
    old_ema = [p.clone() for p in trainer.G_ema.parameters()]
    trainer._update_ema(4, torch.tensor(False))  # a step that was not finite: G_ema stays
    assert all(torch.equal(p_ema, p_old) for p_ema, p_old in zip(trainer.G_ema.parameters(), old_ema))
    trainer._update_ema(4, torch.tensor(True))
    beta = 0.5 ** (4 / 2500)
    for p_ema, p_old, p in zip(trainer.G_ema.parameters(), old_ema, trainer.G.parameters()):
        torch.testing.assert_close(p_ema, p * (1 - beta) + p_old * beta)


def test_schedules_by_images_seen():
    config = ffhq512()
    assert Schedule.at(config, 0) == Schedule(blur_sigma=10.0, gpc_prob=1.0, neural_rendering_resolution=64)
    s = Schedule.at(config, 100_000)
    assert s.blur_sigma == pytest.approx(5.0) and s.gpc_prob == pytest.approx(1 - 0.1 * 0.5)
    s = Schedule.at(config, 2_000_000)
    assert s.blur_sigma == 0 and s.gpc_prob == pytest.approx(0.5)
    assert Schedule.at(ffhq512_stage2(), 500_000).neural_rendering_resolution == 96  # rint(64/2 + 128/2)
    assert Schedule.at(ffhq512_stage2(), 5_000_000).neural_rendering_resolution == 128


def test_gaussian_blur_is_normalized_and_has_the_requested_spread():
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1
    blurred = gaussian_blur(impulse, 3.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    x = torch.arange(41.0) - 20
    variance = (blurred[0, 0].sum(0) * x.square()).sum().item()
    assert variance == pytest.approx(9.0, rel=0.02)  # truncated at 3 sigma
    assert torch.equal(gaussian_blur(impulse, 0.2), impulse)


def test_r1_penalty_matches_finite_differences():
    config = micro_config("loss.blur_init_sigma=0", "loss.r1_gamma=3")
    trainer = Trainer(config, camera_pool=random_cameras(4))
    D = trainer.D.double()
    stats = StatsReporter()
    loss = EG3DLoss(trainer.G, D, config, stats)
    schedule = Schedule(blur_sigma=0.0, gpc_prob=None, neural_rendering_resolution=16)
    img, c = real_batch(0)
    img, c = img.double(), c.double()
    loss.d_r1(phase_inputs(schedule, real=(img, c)), torch.Tensor.backward)
    penalty = stats.collect()["loss/r1_penalty"]  # mean over the batch

    # Independent check in two parts: (1) the input gradients agree with central differences of sum(D) at
    # random pixels of both images; (2) the penalty is the per-sample sum of their squares.
    real = loss.real_images(img, schedule)
    image, raw = real["image"].clone().requires_grad_(True), real["image_raw"].clone().requires_grad_(True)
    grad_image, grad_raw = torch.autograd.grad(D(image, raw, c).sum(), [image, raw])
    f = lambda: D(image, raw, c).sum().item()
    h = 1e-6
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor, grad in ((image, grad_image), (raw, grad_raw)):
            flat, flat_grad = tensor.view(-1), grad.reshape(-1)
            for i in torch.randint(flat.numel(), (12,), generator=g).tolist():
                v = flat[i].item()
                flat[i] = v + h
                up = f()
                flat[i] = v - h
                down = f()
                flat[i] = v
                # abs: the rounding of a float64 difference quotient, about eps * |sum D| * (layers) / h ~ 1e-10.
                assert flat_grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
    per_sample = grad_image.square().sum([1, 2, 3]) + grad_raw.square().sum([1, 2, 3])
    assert penalty == pytest.approx(per_sample.mean().item(), rel=1e-6)  # the reporter sums in float32


@pytest.mark.parametrize("augment_p", [0.0, 1.0])
def test_r1_penalty_is_the_gradient_at_what_d_receives(augment_p):
    """With blur (and augmentation), the penalty is the squared gradient of D at its actual inputs: the
    blurred (augmented) final image and the (augmented) raw image, as in the reference."""
    config = micro_config("loss.r1_gamma=3")
    trainer = Trainer(config, camera_pool=random_cameras(4))
    D = trainer.D.double()
    stats = StatsReporter()
    loss = EG3DLoss(trainer.G, D, config, stats, AugmentPipe(p=augment_p))
    schedule = Schedule(blur_sigma=1.5, gpc_prob=None, neural_rendering_resolution=16)
    img, c = real_batch(0)
    img, c = img.double(), c.double()
    torch.manual_seed(7)
    loss.d_r1(phase_inputs(schedule, real=(img, c)), torch.Tensor.backward)
    penalty = stats.collect()["loss/r1_penalty"]

    real = loss.real_images(img, schedule)
    torch.manual_seed(7)  # the same augmentation draw
    image, raw = AugmentPipe(p=augment_p).pair(gaussian_blur(real["image"], 1.5), real["image_raw"])
    image, raw = image.detach().requires_grad_(True), raw.detach().requires_grad_(True)
    grad_image, grad_raw = torch.autograd.grad(D(image, raw, c).sum(), [image, raw])
    expected = (grad_image.square().sum([1, 2, 3]) + grad_raw.square().sum([1, 2, 3])).mean().item()
    assert penalty == pytest.approx(expected, rel=1e-6)


def test_r1_backward_reaches_discriminator_parameters_through_double_backward():
    """d(R1)/d(theta) from autograd agrees with finite differences of the penalty.

    The penalty is only piecewise smooth in weights that sit before a leaky ReLU (a kink crossed by the
    finite-difference step makes it jump), so the check uses the projection weights after the last
    activation: the input gradient still passes back through every convolution, so the double
    backward of every layer is exercised.
    """
    config = micro_config("loss.blur_init_sigma=0", "loss.r1_gamma=2")
    trainer = Trainer(config, camera_pool=random_cameras(4))
    D = trainer.D.double()
    loss = EG3DLoss(trainer.G, D, config, StatsReporter())
    schedule = Schedule(blur_sigma=0.0, gpc_prob=None, neural_rendering_resolution=16)
    img, c = real_batch(1)
    img, c = img.double(), c.double()
    D.zero_grad()
    loss.d_r1(phase_inputs(schedule, real=(img, c)), torch.Tensor.backward)
    weight = D.epilogue.out.weight

    def mean_penalty():
        real = {k: v.detach().requires_grad_(True) for k, v in loss.real_images(img, schedule).items()}
        g1, g2 = torch.autograd.grad(D(real["image"], real["image_raw"], c).sum(), [real["image"], real["image_raw"]])
        return (g1.square().sum([1, 2, 3]) + g2.square().sum([1, 2, 3])).mean().item()

    h = 1e-6
    for index in [(0, 0), (3, 7), (10, 2)]:
        with torch.no_grad():
            weight[index] += h
        up = mean_penalty()
        with torch.no_grad():
            weight[index] -= 2 * h
        down = mean_penalty()
        with torch.no_grad():
            weight[index] += h
        assert weight.grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-12)
    assert D.blocks[0].conv0.weight.grad.abs().sum() > 0


def test_density_regularization_is_l1_between_perturbed_points():
    config = micro_config("loss.density_reg=0.25")
    trainer = Trainer(config, camera_pool=random_cameras(4))
    stats = trainer.stats
    z = torch.randn(2, config.model.z_dim)
    c = random_cameras(2)
    schedule = Schedule(blur_sigma=0.0, gpc_prob=None, neural_rendering_resolution=16)
    torch.manual_seed(7)
    trainer.loss.g_density_reg(phase_inputs(schedule, gen=(z, c)), torch.Tensor.backward)
    reported = stats.collect()["loss/density_reg"]
    torch.manual_seed(7)
    ws = trainer.G.map(z, c)
    points = torch.rand(2, 50, 3) * 2 - 1
    perturbed = points + torch.randn_like(points) * 0.004
    with torch.no_grad():
        a = trainer.G.density(ws, points, noise_mode="random")
    # Same RNG stream as the loss: the backbone draws its noise after the points.
    torch.manual_seed(7)
    ws = trainer.G.map(z, c)
    points = torch.rand(2, 50, 3) * 2 - 1
    perturbed = points + torch.randn_like(points) * 0.004
    with torch.no_grad():
        both = trainer.G.density(ws, torch.cat([points, perturbed], 1))
    expected = (both[:, :50] - both[:, 50:]).abs().mean().item() * 0.25
    assert reported == pytest.approx(expected, rel=1e-5)
    assert a.shape == (2, 50, 1)


def test_bf16_precision_autocasts_the_forward_passes_and_keeps_fp32_state():
    trainer = Trainer(micro_config("run.precision=bf16"), camera_pool=random_cameras(8))
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    conv_output_dtypes = set()
    for module in trainer.D.modules():
        if type(module).__name__ == "Conv2d":
            module.register_forward_hook(lambda m, inputs, output: conv_output_dtypes.add(output.dtype))
    trainer.train_step(*real_batch(0))
    assert torch.bfloat16 in conv_output_dtypes  # (a float32 bias added afterwards promotes some outputs)
    stats = trainer.stats.collect()
    assert all(math.isfinite(stats[k]) for k in ("loss/G", "loss/D", "loss/D_r1")), stats
    assert all(p.dtype == torch.float32 for p in [*trainer.G.parameters(), *trainer.D.parameters()])
    assert any(not torch.equal(v, before[k]) for k, v in trainer.G.state_dict().items())


def training_state(trainer: Trainer) -> dict:
    """Everything a step may change, copied: networks (w_avg among G's buffers), EMA, optimizer states."""
    state = {f"{name}.{key}": value for name in ("G", "D", "G_ema")
             for key, value in getattr(trainer, name).state_dict().items()}
    state.update(opt_G=trainer.opt_G.state_dict(), opt_D=trainer.opt_D.state_dict())
    return copy.deepcopy(state)


def assert_bit_identical(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bit_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_bit_identical(x, y, f"{where}[{index}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where  # NaN != NaN: a poisoned value fails too
    else:
        assert a == b, where


def poison_latents(trainer: Trainer, phase_names: set[str]):
    """NaN latent codes for the named phases: their fakes, losses and gradients become NaN, and Dmain's
    fakes would carry the NaN into G's tracked mean w."""
    original = trainer.phase_latents

    def poisoned(phase_index):
        z, c = original(phase_index)
        if trainer.phases[phase_index].name in phase_names:
            z = torch.full_like(z, float("nan"))
        return z, c

    trainer.phase_latents = poisoned


def test_a_fully_skipped_step_changes_no_state_not_even_w_avg():
    config = micro_config("loss.r1_interval=1", "loss.density_reg_interval=1")  # every phase at every step
    trainer = Trainer(config, camera_pool=random_cameras(8))
    trainer.train_step(*real_batch(0))  # Adam moments and w_avg away from their initial values
    before = training_state(trainer)
    assert before["opt_G"]["state"] and before["G.mapping.w_avg"].abs().sum() > 0
    poison_latents(trainer, {"Gmain", "Greg", "Dmain"})
    img, c = real_batch(1)
    img[0, 0, 0, 0] = float("nan")  # Dreg sees only the real images
    trainer.train_step(img, c)
    assert trainer.skipped_steps == {"G": 2, "D": 2}
    assert_bit_identical(training_state(trainer), before)
    assert trainer.nonfinite_streak == 1
    assert (trainer.nimg, trainer.step_index) == (8, 2)  # the batch was used up; the schedules go on


def test_a_skipped_d_phase_restores_w_avg_while_the_finite_g_phase_steps_as_before():
    """Only D's phases see the poisoned real images. Gmain runs first and never reads them, so G's
    update must be bit-identical to a clean run's; w_avg (moved by Dmain's fakes) must stay as it was."""
    config = micro_config()
    clean, poisoned = (Trainer(config, camera_pool=random_cameras(8)) for _ in range(2))
    for trainer in (clean, poisoned):
        trainer.train_step(*real_batch(0))
    before = training_state(poisoned)
    clean.train_step(*real_batch(1))
    img, c = real_batch(1)
    img[:, :, 0, 0] = float("nan")
    poisoned.train_step(img, c)
    assert poisoned.skipped_steps == {"G": 0, "D": 1}
    after = training_state(poisoned)
    assert torch.equal(after["G.mapping.w_avg"], before["G.mapping.w_avg"])
    assert not torch.equal(clean.G.mapping.w_avg, before["G.mapping.w_avg"])  # a finite Dmain moves it
    for name, value in clean.G.named_parameters():
        assert torch.equal(poisoned.G.get_parameter(name), value), name
    assert_bit_identical(trainer_part(after, "D."), trainer_part(before, "D."))
    assert_bit_identical(after["opt_D"], before["opt_D"])
    assert_bit_identical(trainer_part(after, "G_ema."), trainer_part(before, "G_ema."))  # a skipped step
    assert poisoned.nonfinite_streak == 1


def trainer_part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_nonfinite_streak_counts_consecutive_skipped_steps_and_survives_a_resume():
    trainer = Trainer(micro_config(), camera_pool=random_cameras(8))
    poisoned_steps = {1, 2, 4, 5, 6}
    streaks = []
    for step in range(7):
        img, c = real_batch(step)
        if step in poisoned_steps:
            img[0, 0, 0, 0] = float("nan")
        trainer.train_step(img, c)
        streaks.append(trainer.nonfinite_streak)
    assert streaks == [0, 1, 2, 0, 1, 2, 3]
    resumed = Trainer(micro_config(), camera_pool=random_cameras(8))
    resumed.load_state_dict(copy.deepcopy(trainer.state_dict()))
    assert resumed.nonfinite_streak == 3
    resumed.train_step(*real_batch(7))
    assert resumed.nonfinite_streak == 0


def test_a_non_finite_weight_after_a_finite_step_keeps_g_ema_and_counts():
    trainer = Trainer(micro_config(), camera_pool=random_cameras(8))
    trainer.train_step(*real_batch(0))
    with torch.no_grad():
        trainer.G.superresolution.parameters().__next__()[0] = float("inf")  # as an overflowing update would
    ema_before = copy.deepcopy(trainer.G_ema.state_dict())
    trainer.phases = [p for p in trainer.phases if p.name == "Dreg"]  # reals only: its gradients stay finite
    trainer.train_step(*real_batch(1))
    assert trainer.skipped_steps == {"G": 0, "D": 0}
    assert_bit_identical(trainer.G_ema.state_dict(), ema_before)
    assert trainer.nonfinite_streak == 1


def test_a_resume_takes_the_learning_rates_of_the_new_config():
    """After a divergence the advice is to resume with lower learning rates: the saved optimizer's
    own learning rate must not win over the config's."""
    trainer = Trainer(micro_config(), camera_pool=random_cameras(8))
    trainer.train_step(*real_batch(0))
    state = copy.deepcopy(trainer.state_dict())
    lowered = Trainer(micro_config("optimizer.g_lr=0.001", "optimizer.d_lr=0.0005", "optimizer.betas=[0.1, 0.9]"),
                      camera_pool=random_cameras(8))
    lowered.load_state_dict(state)
    assert lowered.opt_G.param_groups[0]["lr"] == pytest.approx(0.001 * 4 / 5, rel=1e-12)  # density_reg_interval 4
    assert lowered.opt_D.param_groups[0]["lr"] == pytest.approx(0.0005 * 16 / 17, rel=1e-12)  # r1_interval 16
    assert lowered.opt_D.param_groups[0]["betas"] == pytest.approx((0.1 ** (16 / 17), 0.9 ** (16 / 17)), rel=1e-12)
    assert_bit_identical(lowered.opt_G.state_dict()["state"], state["opt_G"]["state"])  # the moments carry over
    same = Trainer(micro_config(), camera_pool=random_cameras(8))
    same.load_state_dict(state)
    assert same.opt_G.state_dict()["param_groups"] == state["opt_G"]["param_groups"]


class ConditioningRecorder:
    """A stand-in generator that records the conditioning camera each phase hands to its mapping."""

    def __init__(self):
        self.conditioning = []

    def map(self, z, c, update_w_avg: bool = False):
        self.conditioning.append(c.clone())
        return z[:, None]

    def density(self, ws, points):
        return points[..., :1] * ws.mean()

    def synthesis(self, ws, c, *, neural_rendering_resolution: int):
        return {}


def swapped_per_sample(run_phase, draws: int, batch: int = 4) -> torch.Tensor:
    """[draws, batch] booleans: was sample i conditioned on the previous sample's camera (the swap) in
    draw d? Each draw seeds the global generator as the trainer does for one micro-batch."""
    G = ConditioningRecorder()
    loss = EG3DLoss(G, None, micro_config(), StatsReporter())
    z, c = torch.randn(batch, 3), random_cameras(batch)
    schedule = Schedule(blur_sigma=0.0, gpc_prob=0.5, neural_rendering_resolution=16)
    for draw in range(draws):
        torch.manual_seed(step_seed(0, draw, 1, 0))
        run_phase(loss, z, c, schedule)
    recorded = torch.stack(G.conditioning)  # [draws, batch, 25]
    swapped = (recorded == torch.roll(c, 1, dims=0)).all(dim=-1)
    assert (swapped | (recorded == c).all(dim=-1)).all()  # each sample keeps its camera or takes the swap
    return swapped


# 400 draws of a probability 1/2: the observed fraction has standard deviation sqrt(0.25 / 400) = 0.025,
# so 0.5 +- 0.1 (4 standard deviations) fails a correct implementation with probability about 6e-5.
GPC_DRAWS, GPC_TOLERANCE = 400, 0.1


def test_density_phase_swaps_the_conditioning_of_the_whole_batch_or_none():
    swapped = swapped_per_sample(
        lambda loss, z, c, s: loss.g_density_reg(phase_inputs(s, gen=(z, c)), lambda tensor: None), GPC_DRAWS)
    swapped_count = swapped.sum(dim=1)
    assert ((swapped_count == 0) | (swapped_count == swapped.shape[1])).all()  # one draw per batch, as the reference
    assert swapped[:, 0].float().mean().item() == pytest.approx(0.5, abs=GPC_TOLERANCE)


def test_main_generator_phase_swaps_the_conditioning_per_sample():
    swapped = swapped_per_sample(lambda loss, z, c, s: loss.run_G(z, c, s), GPC_DRAWS)
    assert swapped.float().mean().item() == pytest.approx(0.5, abs=GPC_TOLERANCE / 2)  # 1600 samples: 4 std 0.05
    swapped_count = swapped.sum(dim=1)
    mixed = ((swapped_count > 0) & (swapped_count < swapped.shape[1])).float().mean().item()
    # A batch of 4 is mixed with probability 1 - 2/16 = 7/8 (standard deviation 0.017 over 400 draws).
    assert mixed == pytest.approx(7 / 8, abs=0.07)
