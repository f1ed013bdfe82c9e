"""run.compile: compiled training steps against eager ones, recompiles at a new neural rendering
resolution, and checkpoints between the two (eg3d.training.compilation)."""

import io

import pytest
import torch

from model_helpers import micro_config, random_cameras
from eg3d.training.trainer import Trainer

pytestmark = pytest.mark.slow  # torch.compile of G and D: about 20 s with its cache warm, minutes cold

# Every phase due at steps 0 and 2 (Dreg eager even when compiled); the neural rendering resolution
# fades from 16 to 24 within the first step's 4 images, so step 0 renders at 16 and steps 1-3 at 24.
OVERRIDES = ("loss.r1_interval=2", "loss.density_reg_interval=2", "rendering.neural_rendering_resolution_final=24",
             "rendering.neural_rendering_resolution_fade_kimg=0.001")
STEPS = 4
# Inductor fuses and reorders float arithmetic, so compiled losses agree with eager ones to rounding,
# not bit for bit (observed: relative differences of 1e-6 and below).
RTOL = 1e-4


def real_batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, random_cameras(4, seed=step)


def train(trainer: Trainer) -> list[dict]:
    """Each step's run-wide means and this worker's totals."""
    history = []
    for step in range(STEPS):
        trainer.train_step(*real_batch(step))
        means, ranks = trainer.stats.collect_all()
        history.append({**means, **ranks[0]})
    return history


@pytest.fixture(scope="module")
def runs():
    eager = Trainer(micro_config(*OVERRIDES), camera_pool=random_cameras(16))
    compiled = Trainer(micro_config(*OVERRIDES, "run.compile=true"), camera_pool=random_cameras(16))
    return eager, train(eager), compiled, train(compiled)


def test_compiled_losses_equal_eager_ones(runs):
    _, eager, _, compiled = runs
    for step, (expected, actual) in enumerate(zip(eager, compiled)):
        losses = sorted(key for key in expected if key.startswith("loss/"))
        assert losses == sorted(key for key in actual if key.startswith("loss/")), step
        for key in losses:
            assert actual[key] == pytest.approx(expected[key], rel=RTOL), (step, key)


def test_compile_time_is_counted_apart_and_a_new_resolution_recompiles(runs):
    _, eager, _, compiled = runs
    assert all("compile/graphs" not in record for record in eager)
    graphs = [record.get("compile/graphs", 0) for record in compiled]
    assert graphs[0] > 0 and compiled[0]["compile/seconds"] > 0  # the first step compiles
    assert graphs[1] > 0  # 16 -> 24: the renderer, the super-resolution and D again
    assert graphs[2:] == [0, 0]  # then the shapes stay put
    # A phase that compiled is compile time, not step time; Dreg (eager) compiles nothing.
    assert "seconds/Gmain" not in compiled[0] and "seconds/Dmain" not in compiled[0]
    assert "seconds/Dreg" in compiled[0] and "seconds/Gmain" in compiled[2]


def test_checkpoints_load_across_compiled_and_eager(runs):
    eager, _, compiled, _ = runs
    assert eager.state_dict()["G"].keys() == compiled.state_dict()["G"].keys()  # no _orig_mod. prefix
    assert eager.state_dict()["D"].keys() == compiled.state_dict()["D"].keys()
    for source, compile in ((compiled, False), (eager, True)):
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        overrides = OVERRIDES + (f"run.compile={'true' if compile else 'false'}",)
        target = Trainer(micro_config(*overrides), camera_pool=random_cameras(16))
        target.load_state_dict(torch.load(buffer, weights_only=False))
        for name in ("G", "D", "G_ema"):
            for key, value in getattr(source, name).state_dict().items():
                assert torch.equal(getattr(target, name).state_dict()[key], value), (name, key)
        assert target.nimg == source.nimg
