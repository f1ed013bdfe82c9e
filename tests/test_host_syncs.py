"""The training step does not wait on the host: counted on the CPU, call by call.

On a GPU, every read of a device value on the host (`.item()`, `bool(tensor)`, `.tolist()`, ...) and every
`torch.cuda.synchronize` stalls the host until the device has run all it was given, and the device then
idles while the host queues the next kernels. The CPU has no such queue, but the same calls are made there,
so counting them on a CPU run shows what a GPU run would wait for. The trainer counted runs Adam fused, as
on CUDA (on the CPU it keeps torch's default Adam, which reads each phase's flag: see docs/performance.md).
bench/train_step.py --syncs counts the real thing on a GPU (torch.cuda.set_sync_debug_mode).
"""

import contextlib
import copy
import sys
from collections import Counter
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model_helpers import micro_config, random_cameras
from eg3d.config import apply_overrides
from eg3d.config.presets import tiny
from eg3d.training import trainer as trainer_module
from eg3d.training.trainer import Trainer

# The calls that read a device value on the host (or wait for the device) on a GPU.
TENSOR_READS = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")
# The aten operators behind them, and those that read a device value inside C++ (an output size).
ATEN_READS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "repeat_interleave")
MASK_INDEXING = ("index", "index_put", "index_put_")  # with a boolean mask: its nonzero, inside C++

# Reads of tensors that live on the host on every device, so that reading them never waits for a GPU: ADA's
# transform parameters, drawn and composed on the host (eg3d.training.augment.host_padding). (path, function)
HOST_SIDE = (("/eg3d/training/augment.py", "host_padding"),)


def _host_side(frame) -> bool:
    while frame is not None:
        path, function = frame.f_code.co_filename.replace("\\", "/"), frame.f_code.co_name
        if any(part in path and name == function for part, name in HOST_SIDE):
            return True
        frame = frame.f_back
    return False


def _call_site(frame) -> str:
    """The innermost frame in the project's code, as file:line (function)."""
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/eg3d/" in path and "/tests/" not in path:
            return f"{path.split('/eg3d/')[-1]}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside eg3d"


class HostReads(TorchDispatchMode):
    """Counts, per call site, the host reads of device values and the device synchronizations made while
    active: the Python calls of TENSOR_READS and torch.cuda.synchronize, patched with counting wrappers, and
    the aten operators of ATEN_READS that no such call made (reads inside C++), seen by this dispatch mode."""

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()
        self._inside = 0  # > 0 while a counted Python call runs: its aten operators are the same read
        self._patches = contextlib.ExitStack()

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def _count(self, what: str, frame) -> None:
        if not _host_side(frame):
            self.sites[f"{what} at {_call_site(frame)}"] += 1

    def _wrap(self, what: str, original):
        def counted(*args, **kwargs):
            if not self._inside:
                self._count(what, sys._getframe(1))
            self._inside += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._inside -= 1
        return counted

    def __enter__(self):
        for name in TENSOR_READS:
            self._patches.enter_context(mock.patch.object(torch.Tensor, name,
                                                          self._wrap(f"Tensor.{name}", getattr(torch.Tensor, name))))
        for module, name in ((torch, "nonzero"), (torch.cuda, "synchronize")):
            self._patches.enter_context(mock.patch.object(module, name,
                                                          self._wrap(f"torch.{name}", getattr(module, name))))
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._patches.close()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self._inside and (name in ATEN_READS or name in MASK_INDEXING and _boolean_index(args)):
            self._count(f"aten.{name}", sys._getframe(1))
        return func(*args, **(kwargs or {}))


def _boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def tiny_with_every_phase():
    """tiny with every phase within a few steps (G-reg every 3, D-reg every 2) and ADA on at p = 0.2 (adjusted
    every 4 steps), so that the augmentation pipeline runs in every D pass."""
    return apply_overrides(tiny(), ["loss.density_reg_interval=3", "loss.r1_interval=2", "augment.kind=ada",
                                    "augment.p=0.2", "augment.interval=4"])


def real_batch(config, step: int):
    """tiny's batch of images and cameras for `step`."""
    g = torch.Generator().manual_seed(step)
    n, res = config.run.batch_size, config.model.image_resolution
    return torch.rand(n, 3, res, res, generator=g) * 2 - 1, random_cameras(n, seed=step)


def micro_batch(step: int):
    """The micro config's batch of 4 images (32 x 32) and cameras for `step`."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, random_cameras(4, seed=step)


def test_the_counter_sees_python_and_cpp_reads():
    values = torch.arange(4.0)
    with HostReads() as reads:
        values.sum().item()
        bool(values.any())
        values[values > 1]  # a boolean mask: nonzero, inside C++
        torch.repeat_interleave(torch.tensor([1, 2]))  # its output size, inside C++
    assert reads.count == 4, reads.sites
    assert all(site.endswith("outside eg3d") for site in reads.sites), reads.sites


def test_the_counter_sees_the_reads_inside_the_trainer():
    """With torch's default Adam (the CPU's) each phase's finite flag is read, by the trainer's step_if_finite:
    one per phase here (every phase at every step), besides Adam's own reads of its step counts."""
    trainer = Trainer(micro_config("loss.r1_interval=1", "loss.density_reg_interval=1"), camera_pool=random_cameras(8))
    with HostReads() as reads:
        trainer.train_step(*micro_batch(0))
    flags = {site: n for site, n in reads.sites.items() if site.startswith("Tensor.item at training/trainer.py")
             and site.endswith("(step_if_finite)")}
    assert sum(flags.values()) == len(trainer.phases) == 4, reads.sites


def fused_adam_trainer(monkeypatch, config, camera_pool=None) -> Trainer:
    """A trainer with Adam fused, as on CUDA."""
    monkeypatch.setattr(trainer_module, "FUSED_ADAM_DEVICES", ("cuda", "cpu"))
    trainer = Trainer(config, camera_pool=random_cameras(16) if camera_pool is None else camera_pool)
    assert trainer.opt_G.defaults["fused"] and trainer.opt_D.defaults["fused"]
    return trainer


def test_an_ordinary_step_reads_the_device_at_most_once(monkeypatch):
    """Per step of the tiny trainer with no log, checkpoint or snapshot due (the trainer alone), every phase
    included: Gmain and Dmain at every step, Greg at steps 3 and 6, Dreg at 2, 4 and 6, ADA in every D pass.
    The one read left is ADA's adjustment, every augment.interval steps. (Before: 18 to 28 per step.)"""
    config = tiny_with_every_phase()
    trainer = fused_adam_trainer(monkeypatch, config)
    trainer.train_step(*real_batch(config, 0))  # Adam's state and the lazy initializations
    per_step = []
    for step in range(1, 7):
        batch = real_batch(config, step)
        with HostReads() as reads:
            trainer.train_step(*batch)
        per_step.append(reads)
    adjusted = [(step + 1) % config.augment.interval == 0 for step in range(1, 7)]  # after step 3
    assert [reads.count for reads in per_step] == [int(a) for a in adjusted], [reads.sites for reads in per_step]
    assert all(site.endswith("(_adapt_augmentation)") for reads in per_step for site in reads.sites)
    assert 0 < trainer.augment.p < 1 and trainer.skipped_steps == {"G": 0, "D": 0}
    own = trainer.stats.collect_all()[1][0]
    assert {"seconds/Gmain", "seconds/Greg", "seconds/Dmain", "seconds/Dreg"} <= own.keys()


# --- the skip, done on the device by fused Adam --------------------------------------------------------------

def training_state(trainer: Trainer) -> dict:
    """Everything a step may change, copied: networks (w_avg among G's buffers), EMA, optimizer states."""
    state = {f"{name}.{key}": value for name in ("G", "D", "G_ema")
             for key, value in getattr(trainer, name).state_dict().items()}
    state.update({f"{name}.{index}.{key}": value for name in ("opt_G", "opt_D")
                  for index, values in getattr(trainer, name).state_dict()["state"].items()
                  for key, value in values.items()})
    return copy.deepcopy(state)


def assert_bit_identical(after: dict, before: dict) -> None:
    assert after.keys() == before.keys()
    changed = [key for key in before if not torch.equal(after[key], before[key])]  # NaN != NaN: poison fails too
    assert not changed, changed


def poison(trainer: Trainer, phase_names: set[str]) -> None:
    """NaN latent codes for the named phases: their losses and gradients become NaN (and Dmain's fakes would
    carry the NaN into G's tracked mean w)."""
    original = trainer.phase_latents

    def poisoned(phase_index):
        z, c = original(phase_index)
        return (z * float("nan") if trainer.phases[phase_index].name in phase_names else z), c

    trainer.phase_latents = poisoned


def test_fused_adam_skips_every_nonfinite_phase_exactly(monkeypatch):
    """The CUDA path, on the CPU: with every phase at every step and all of them poisoned, the step changes no
    weight, no Adam moment or step count, not w_avg, not G_ema; the counts are the default Adam's."""
    config = micro_config("loss.r1_interval=1", "loss.density_reg_interval=1")
    trainer = fused_adam_trainer(monkeypatch, config, random_cameras(8))
    trainer.train_step(*micro_batch(0))  # Adam's state and w_avg away from their initial values
    before = training_state(trainer)
    poison(trainer, {"Gmain", "Greg", "Dmain"})
    images, c = micro_batch(1)
    images[0, 0, 0, 0] = float("nan")  # Dreg sees only the real images
    trainer.train_step(images, c)
    assert trainer.skipped_steps == {"G": 2, "D": 2} and trainer.nonfinite_streak == 1
    assert_bit_identical(training_state(trainer), before)
    trainer.phase_latents = Trainer.phase_latents.__get__(trainer)
    trainer.train_step(*micro_batch(2))
    assert trainer.nonfinite_streak == 0
    assert not torch.equal(trainer.G.mapping.w_avg, before["G.mapping.w_avg"])


def test_fused_adam_skips_the_d_phases_while_g_steps_as_in_a_clean_run(monkeypatch):
    config = micro_config()
    clean, poisoned = (fused_adam_trainer(monkeypatch, config, random_cameras(8)) for _ in range(2))
    for trainer in (clean, poisoned):
        trainer.train_step(*micro_batch(0))
    before = training_state(poisoned)
    clean.train_step(*micro_batch(1))
    images, c = micro_batch(1)
    images[:, :, 0, 0] = float("nan")  # only D's phases see the real images
    poisoned.train_step(images, c)
    after = training_state(poisoned)
    assert poisoned.skipped_steps == {"G": 0, "D": 1}
    for name, value in clean.G.named_parameters():
        assert torch.equal(poisoned.G.get_parameter(name), value), name
    assert_bit_identical({k: v for k, v in after.items() if k.startswith(("D.", "opt_D.", "G_ema."))},
                         {k: v for k, v in before.items() if k.startswith(("D.", "opt_D.", "G_ema."))})
    assert torch.equal(after["G.mapping.w_avg"], before["G.mapping.w_avg"])


def test_a_streak_between_two_reads_is_still_found_with_its_steps(monkeypatch):
    """The loop reads the non-finite counts at log and checkpoint steps only: a streak that reached
    run.max_nonfinite_steps and ended between two reads is still found, with the steps it spanned."""
    from eg3d.training.loop import diverged_at, divergence_message

    trainer = fused_adam_trainer(monkeypatch, micro_config(), random_cameras(8))
    for step in range(6):
        images, c = micro_batch(step)
        if step in (1, 2, 3):
            images[0, 0, 0, 0] = float("nan")  # D's phases skipped
        trainer.train_step(images, c)
    nonfinite = trainer.read_nonfinite()
    assert (nonfinite.streak, nonfinite.longest_streak, nonfinite.longest_streak_end) == (0, 3, 3)
    assert nonfinite.skipped_steps == {"G": 0, "D": 3}
    assert diverged_at(nonfinite, 3) and not diverged_at(nonfinite, 4) and not diverged_at(nonfinite, 0)
    assert "(steps 1..3, the last at 0.016 kimg, 16 images seen;" in divergence_message(trainer, None, nonfinite)
    assert trainer.read_nonfinite().longest_streak == 0  # each read starts a new window


def test_a_checkpoint_moves_between_the_default_and_the_fused_adam(monkeypatch):
    """A CPU run's checkpoint resumes with fused Adam (a GPU's) and back: each loads Adam's moments and step
    counts as its own kind keeps them, and steps on."""
    config = micro_config()
    default = Trainer(config, camera_pool=random_cameras(8))
    default.train_step(*micro_batch(0))
    fused = fused_adam_trainer(monkeypatch, config, random_cameras(8))
    fused.load_state_dict(copy.deepcopy(default.state_dict()))
    assert all(group["fused"] for group in fused.opt_G.param_groups)
    fused.train_step(*micro_batch(1))
    monkeypatch.setattr(trainer_module, "FUSED_ADAM_DEVICES", ("cuda",))
    back = Trainer(config, camera_pool=random_cameras(8))
    back.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert not any(group["fused"] for group in back.opt_D.param_groups)
    back.train_step(*micro_batch(2))
    for step in range(1, 3):
        default.train_step(*micro_batch(step))
    for optimizer, reference in ((back.opt_G, default.opt_G), (back.opt_D, default.opt_D)):
        steps = [state["step"] for state in optimizer.state_dict()["state"].values()]
        assert all(step.dtype == torch.float32 and step.device.type == "cpu" for step in steps)
        assert steps == [state["step"] for state in reference.state_dict()["state"].values()]
