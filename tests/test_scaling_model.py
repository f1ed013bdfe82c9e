"""bench/scaling_model.py: its formulas against values worked out by hand, and its counts against the built
networks (nothing here is timed)."""

import json
import math

import pytest
import torch

from eg3d.config.presets import tiny
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.summary import flops_per_image
from eg3d.training.checkpoints import torch_bytes
from eg3d.training.trainer import Trainer
from bench_scripts import load_bench_script
from model_helpers import random_cameras

US = 1e-6


@pytest.fixture(scope="module")
def model():
    return load_bench_script("scaling_model")


@pytest.fixture(scope="module")
def tiny_counts(model):
    return model.count_phases(tiny())


def test_ring_all_reduce_of_1_gb_on_8_gpus(model):
    link = model.Link(100e9, 5 * US)
    expected = 2 * 7 / 8 * 1e9 / 100e9 + 2 * 7 * 5 * US  # 17.5 ms of bandwidth + 14 steps of 5 us
    assert model.ring_all_reduce_seconds(1e9, 8, link) == pytest.approx(expected)
    assert model.ring_all_reduce_seconds(1e9, 1, link) == 0.0


def test_all_reduce_is_hierarchical_across_nodes(model):
    nvlink, net = model.Link(400e9, 5 * US), model.Link(50e9, 10 * US)
    fabric = model.Fabric("test", nvlink, net)
    # 8 GPUs: one node, a ring on NVLink
    assert model.all_reduce_seconds(1e9, 8, fabric) == pytest.approx(2 * 7 / 8 * 1e9 / 400e9 + 14 * 5 * US)
    # 32 GPUs, 4 nodes: the node's ring, then a ring of 4 over each GPU's eighth
    within = 2 * 7 / 8 * 1e9 / 400e9 + 14 * 5 * US
    across = 2 * 3 / 4 * (1e9 / 8) / 50e9 + 6 * 10 * US
    assert model.all_reduce_seconds(1e9, 32, fabric) == pytest.approx(within + across)
    with pytest.raises(ValueError):
        model.all_reduce_seconds(1e9, 12, fabric)


def test_exposed_communication(model):
    assert model.exposed_seconds(0.010, 0.008, 0.001, overlap=False) == 0.010  # today: all of it
    assert model.exposed_seconds(0.010, 0.008, 0.001, overlap=True) == pytest.approx(0.002)  # what the backward leaves
    assert model.exposed_seconds(0.010, 0.050, 0.001, overlap=True) == 0.001  # at least the last bucket
    assert model.exposed_seconds(0.0005, 0.050, 0.001, overlap=True) == 0.0005  # one bucket in all


def test_per_step_mean_and_efficiency(model):
    assert model.per_step([4.0, 8.0, 16.0], [1, 4, 16]) == 4 + 2 + 1
    assert model.efficiency(1.0, 0.25, 0.25) == pytest.approx(1 / 1.5)
    assert model.efficiency(2.0, 0.0) == 1.0


def test_checkpoint_interval_is_the_sooner_of_images_and_minutes(model):
    assert model.checkpoint_interval_seconds(1000.0, checkpoint_kimg=200, checkpoint_minutes=15) == 200.0
    assert model.checkpoint_interval_seconds(100.0, checkpoint_kimg=200, checkpoint_minutes=15) == 900.0
    assert model.checkpoint_interval_seconds(100.0, checkpoint_kimg=200, checkpoint_minutes=None) == 2000.0
    assert model.checkpoint_interval_seconds(1000.0, checkpoint_kimg=math.inf, checkpoint_minutes=15) == 900.0


def test_step_communication_by_hand(model):
    phases = [model.PhaseCost("every step", 1, True, 3e9, 2e9, 1_000_000),
              model.PhaseCost("every 4th", 4, False, 3e9, 2e9, 500_000)]
    counts = model.Counts(phases, g_params=0, d_params=0, g_float_buffers=10, checkpoint_bytes=0)
    link = model.Link(1e9, 10 * US)
    ring2 = lambda nbytes: nbytes / 1e9 + 2 * 10 * US  # 2 ranks: 2 (N-1)/N = 1, two steps
    expected = (ring2(4e6) + ring2(4)) + (ring2(2e6) + ring2(4)) / 4 + ring2(40)
    got = model.step_communication(counts, [0.1, 0.1], 2, model.Fabric("f", link, link), grad_bytes=4,
                                   overlap=False, per_node=2)
    assert got == pytest.approx(expected)
    # overlapped: a backward of 2/3 of 100 ms covers everything but the last bucket, here the whole message
    overlapped = model.step_communication(counts, [0.1, 0.1], 2, model.Fabric("f", link, link), grad_bytes=4,
                                          overlap=True, per_node=2)
    assert overlapped == pytest.approx(expected)
    long_bucket = model.BUCKET_BYTES
    counts = model.Counts([model.PhaseCost("big", 1, True, 3e9, 2e9, 4 * long_bucket)], 0, 0, 0, 0)
    hidden = model.step_communication(counts, [1.0], 2, model.Fabric("f", link, link), grad_bytes=4, overlap=True,
                                      per_node=2)
    assert hidden == pytest.approx(ring2(long_bucket) + ring2(4) + ring2(0))


def test_shared_out_keeps_the_measured_step(model, tiny_counts):
    seconds = model.shared_out(tiny_counts.phases, 0.5)
    assert model.per_step(seconds, [p.interval for p in tiny_counts.phases]) == pytest.approx(0.5)
    assert seconds[0] / seconds[1] == pytest.approx(tiny_counts.phases[0].flops / tiny_counts.phases[1].flops)


def test_parameter_counts_are_the_built_networks(tiny_counts):
    config = tiny()
    G, D = TriPlaneGenerator(config.model, config.rendering), DualDiscriminator(config.model)
    assert tiny_counts.g_params == sum(p.numel() for p in G.parameters())
    assert tiny_counts.d_params == sum(p.numel() for p in D.parameters())
    phases = {p.name: p for p in tiny_counts.phases}
    assert [(p.name, p.interval) for p in tiny_counts.phases] == [
        ("Gmain", 1), ("Greg", config.loss.density_reg_interval), ("Dmain", 1), ("Dreg", config.loss.r1_interval)]
    assert phases["Dmain"].reduced_params == tiny_counts.d_params
    # the density regularization never reaches the super-resolution, so DDPSync does not reduce it
    superresolution = sum(p.numel() for p in G.superresolution.parameters())
    assert phases["Greg"].reduced_params == tiny_counts.g_params - superresolution


def test_main_phase_flops_match_the_summary_formula(tiny_counts):
    # bench/train_step.py's formula from eg3d.summary's forward counts: Gmain 3 G + 2 D (G forward and backward,
    # D forward and backward to its input), Dmain 1 G + 2 x 3 D (G without gradients; D forward and backward on a
    # fake and a real). The counts are a little lower: no input gradient where the input needs none.
    summary = flops_per_image(tiny())
    G, D = summary["G_forward"], summary["D_forward"]
    phases = {p.name: p for p in tiny_counts.phases}
    assert phases["Gmain"].flops == pytest.approx(3 * G + 2 * D, rel=0.03)
    assert phases["Dmain"].flops == pytest.approx(G + 6 * D, rel=0.03)
    assert 0 < phases["Dreg"].backward_flops < phases["Dreg"].flops


def test_checkpoint_bytes_match_a_saved_trainer(model):
    config = tiny()
    trainer = Trainer(config, camera_pool=random_cameras(8))
    for optimizer in (trainer.opt_G, trainer.opt_D):  # Adam's moments exist after its first step
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
    saved = len(torch_bytes(trainer.state_dict()))
    assert model.checkpoint_bytes(trainer) == pytest.approx(saved, rel=0.03)


def test_measured_step_from_gpu_check(model, tmp_path):
    path = tmp_path / "gpu_check.jsonl"
    loop = {"preset": "ffhq512", "how": "worker loop", "batch": 4, "compile": False, "images_per_second": 20.0}
    rows = [{"stage": "pytest gpu", "rc": "0", "seconds": "40"},
            {**loop, "dtype": "fp32", "seconds_per_iteration": 0.4},
            {**loop, "dtype": "bf16", "seconds_per_iteration": 0.2},
            {**loop, "dtype": "bf16", "compile": True, "seconds_per_iteration": 0.1}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert model.measured_step_from_gpu_check(str(path), "bf16") == 0.2
    assert model.measured_step_from_gpu_check(str(path), "fp32") == 0.4
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="no ffhq512 worker-loop record"):
        model.measured_step_from_gpu_check(str(path), "bf16")
