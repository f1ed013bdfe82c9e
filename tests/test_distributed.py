"""Data-parallel training on real gloo process groups: DDP and DeepSpeed give what one process gives.

The training tests compare N workers against an independent single-process run of the same global batch;
the last two check the object collectives (nothing exchanged on one rank, no thread started on two).
"""

import os

import pytest
import torch

from model_helpers import micro_config, random_cameras
from distributed_helpers import run_on_workers
from eg3d.config import batch_split
from eg3d.training.trainer import SingleProcess, Trainer

BACKENDS = [("ddp", 0), ("deepspeed", 0), ("deepspeed", 1)]


def needs(backend: str):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed")


def equivalence_config(*extra: str):
    # Micro-batches of one image: every world size cuts the global batch the same way.
    return micro_config("model.disc_mbstd_group=1", "run.micro_batch=1", "loss.r1_interval=2",
                        "loss.density_reg_interval=2", *extra)


# 10 images in minibatch-std groups of 2 and micro-batches of 4: 3 workers take 4 + 4 + 2, one worker
# 4 + 4 + 2 in turn, so both cut the batch into the same micro-batches (the last one smaller).
# Adam's first steps move each weight by about lr x sign(gradient), so a gradient that cancels to almost
# zero flips its update on one rounding, and 3 workers round differently from one (weights 1.2 / 3
# rather than 0.4). With a larger eps small gradients move weights in proportion instead, which also
# makes the comparison see a wrong scale of any worker's gradient, not only a wrong sign.
UNEVEN = ("run.batch_size=10", "model.disc_mbstd_group=2", "run.micro_batch=4", "optimizer.eps=1e-3")


def global_batch(step: int, n: int = 4):
    g = torch.Generator().manual_seed(500 + step)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, random_cameras(n, seed=step)


def networks(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"G.{k}": v for k, v in trainer.G.state_dict().items()}
    state.update({f"D.{k}": v for k, v in trainer.D.state_dict().items()})
    state.update({f"G_ema.{k}": v for k, v in trainer.G_ema.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


class ZeroFilledGradients(SingleProcess):
    """One process with ZeRO 1's semantics: parameters a phase does not reach get a zero gradient."""

    def optimizer_step(self, phase):
        for p in phase.network.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        phase.optimizer.step()


def make_sync(backend: str, zero_stage: int, config=None):
    from cluster.backends import make_sync as make

    return make(backend, zero_stage=zero_stage)


def my_share(trainer: Trainer, images: torch.Tensor, cameras: torch.Tensor):
    """This rank's images and cameras of a global batch, as its reader would deliver them."""
    first = trainer.split.offset(trainer.sync.rank)
    mine = slice(first, first + trainer.split.shares[trainer.sync.rank])
    return images[mine], cameras[mine]


def train_two_steps(rank: int, backend: str, zero_stage: int, overrides: tuple[str, ...] = ()):
    config = equivalence_config(*overrides)
    sync = make_sync(backend, zero_stage)
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=sync)
    for step in range(2):
        trainer.train_step(*my_share(trainer, *global_batch(step, config.run.batch_size)))
    return {"networks": networks(trainer), "nimg": trainer.nimg, "stats": trainer.stats.collect(sync)}


@pytest.mark.parametrize("backend,zero_stage", BACKENDS)
def test_two_workers_match_one_worker_with_accumulation(backend, zero_stage):
    """2 workers x 2 micro-batches of 1 == 1 worker x 4 micro-batches of 1, through every phase (the R1
    double backward included) for two steps, and the reported statistics are those of the global batch."""
    needs(backend)
    config = equivalence_config()
    assert batch_split(config, 1).micro_batches(0) == (1, 1, 1, 1)
    assert batch_split(config, 2).micro_batches(1) == (1, 1)
    assert_workers_match_one_process(backend, zero_stage, 2, ())


@pytest.mark.parametrize("backend,zero_stage", BACKENDS)
def test_three_workers_with_uneven_shares_match_one_worker(backend, zero_stage):
    """A global batch of 10 on 3 workers (4 + 4 + 2 images, the last micro-batch of the single process
    smaller) == the same batch in one process: each worker's gradient is weighted by its share, so every
    image weighs 1/10, under both backends; the per-step randomness does not depend on the split."""
    needs(backend)
    config = equivalence_config(*UNEVEN)
    assert batch_split(config, 3).shares == (4, 4, 2)
    assert batch_split(config, 1).micro_batches(0) == (4, 4, 2)
    assert_workers_match_one_process(backend, zero_stage, 3, UNEVEN)


def assert_workers_match_one_process(backend: str, zero_stage: int, world_size: int, overrides: tuple[str, ...]):
    config = equivalence_config(*overrides)
    reference_sync = ZeroFilledGradients() if zero_stage == 1 else SingleProcess()
    single = Trainer(config, camera_pool=random_cameras(16), sync=reference_sync)
    for step in range(2):
        single.train_step(*global_batch(step, config.run.batch_size))
    expected, expected_stats = networks(single), single.stats.collect()

    results = run_on_workers(train_two_steps, world_size, args=(backend, zero_stage, overrides))
    for result in results:
        assert result["nimg"] == single.nimg == 2 * config.run.batch_size
        assert result["networks"].keys() == expected.keys()
        for name, value in expected.items():
            if name.endswith("w_avg"):  # a running mean: ranks average theirs, one process chains them
                torch.testing.assert_close(result["networks"][name], results[0]["networks"][name], rtol=0, atol=0)
                torch.testing.assert_close(result["networks"][name], value, rtol=0, atol=1e-4, msg=name)
                continue
            torch.testing.assert_close(result["networks"][name], value, rtol=1e-4, atol=2e-6, msg=name)
        assert result["stats"].keys() == expected_stats.keys()
        for name, value in expected_stats.items():
            if name.startswith("grad_norm/"):
                # Each worker's own gradient, before the mean over workers: the one-process gradient is
                # that mean, so by the triangle inequality its norm is at most the workers' mean norm.
                assert value <= result["stats"][name] * (1 + 1e-5), name
                continue
            assert result["stats"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert any(not torch.equal(v, single.G.state_dict()[k[2:]]) for k, v in networks(
        Trainer(config, camera_pool=random_cameras(16))).items() if k.startswith("G.")), "training moved G"


def poisoned_step(rank: int, backend: str, zero_stage: int):
    config = equivalence_config()
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=make_sync(backend, zero_stage, config))
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    images, cameras = global_batch(0)
    if rank == 1:
        images[2, 0, 0, 0] = float("nan")  # in rank 1's share only: every rank must still skip together
    trainer.train_step(*my_share(trainer, images, cameras))
    unchanged = all(torch.equal(v, before[k]) for k, v in trainer.D.state_dict().items())
    return {"skipped": dict(trainer.skipped_steps), "D_unchanged": unchanged}


@pytest.mark.parametrize("backend,zero_stage", BACKENDS)
def test_a_nonfinite_gradient_on_one_rank_skips_the_step_on_all(backend, zero_stage):
    needs(backend)
    results = run_on_workers(poisoned_step, 2, args=(backend, zero_stage))
    for result in results:
        assert result["skipped"] == {"G": 0, "D": 2}  # Dmain and Dreg; G never sees the real images
        assert result["D_unchanged"]


def poisoned_w_avg_step(rank: int, backend: str, zero_stage: int):
    config = equivalence_config()
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=make_sync(backend, zero_stage, config))
    images, cameras = global_batch(0)
    trainer.train_step(*my_share(trainer, images, cameras))
    before = networks(trainer)
    original = trainer.phase_latents

    def poisoned(phase_index):  # rank 1's fakes in Dmain: NaN, and so its w_avg moves to NaN
        z, c = original(phase_index)
        return (z * float("nan") if rank == 1 and trainer.phases[phase_index].name == "Dmain" else z), c

    trainer.phase_latents = poisoned
    images, cameras = global_batch(1)
    trainer.train_step(*my_share(trainer, images, cameras))
    return {"before": before, "after": networks(trainer), "skipped": dict(trainer.skipped_steps),
            "streak": trainer.nonfinite_streak}


@pytest.mark.parametrize("backend,zero_stage", [("ddp", 0), ("deepspeed", 1)])
def test_a_skipped_phase_on_two_workers_restores_w_avg_on_both(backend, zero_stage):
    """Dmain moves G's tracked mean w on each rank, and the ranks' moves are summed after the step: a
    skipped Dmain must leave it as it was before the step on every rank (not NaN, not rank 0's move),
    and a skipped step must leave G_ema alone, while the finite G phases still update G alike."""
    needs(backend)
    results = run_on_workers(poisoned_w_avg_step, 2, args=(backend, zero_stage))
    for result in results:
        assert result["skipped"] == {"G": 0, "D": 1} and result["streak"] == 1  # Dreg is not due at step 1
        before, after = result["before"], result["after"]
        assert torch.equal(after["G.mapping.w_avg"], before["G.mapping.w_avg"])
        assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("D.", "G_ema."))), "D, G_ema"
        assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("G.")), "Gmain stepped"
    for name, value in results[0]["after"].items():
        assert torch.equal(results[1]["after"][name], value), name


def first_step_state(rank: int, backend: str, zero_stage: int):
    config = equivalence_config()
    sync = make_sync(backend, zero_stage, config)
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=sync)
    images, cameras = global_batch(0)
    trainer.train_step(*my_share(trainer, images, cameras))
    return {"common": trainer.state_dict(), "shard": trainer.optimizer_state_dicts()}


def second_step_from(rank: int, backend: str, zero_stage: int, saved: list[dict]):
    config = equivalence_config()
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=make_sync(backend, zero_stage, config))
    shards = [s["shard"] for s in saved] if trainer.sync.optimizer_sharded else None
    trainer.load_state_dict(saved[0]["common"], optimizer_shards=shards)
    trainer.train_step(*global_batch(1))
    return networks(trainer)


@pytest.mark.parametrize("backend,zero_stage", BACKENDS)
def test_optimizer_state_saved_by_two_workers_resumes_on_one(backend, zero_stage):
    """Step 0 on two workers, step 1 on one worker from their saved state == both steps in one process:
    the optimizer moments (sharded at ZeRO 1) carry over to another world size."""
    needs(backend)
    config = equivalence_config()
    single = Trainer(config, camera_pool=random_cameras(16),
                     sync=ZeroFilledGradients() if zero_stage == 1 else SingleProcess())
    for step in range(2):
        single.train_step(*global_batch(step))
    saved = run_on_workers(first_step_state, 2, args=(backend, zero_stage))
    [resumed] = run_on_workers(second_step_from, 1, args=(backend, zero_stage, saved))
    for name, value in networks(single).items():
        tolerance = dict(rtol=0, atol=1e-4) if name.endswith("w_avg") else dict(rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(resumed[name], value, msg=name, **tolerance)


def adam_moments(trainer: Trainer) -> dict[str, dict]:
    """{network.parameter: {"step", "exp_avg", "exp_avg_sq"}} as this rank's optimizers hold them: per parameter
    (torch's Adam), or at ZeRO 1 this rank's slices, found by DeepSpeed's own map of names to slices."""
    moments = {}
    for prefix, network, optimizer in (("G", trainer.G, trainer.opt_G), ("D", trainer.D, trainer.opt_D)):
        if trainer.sync.optimizer_sharded:
            zero = trainer.sync.engines[id(optimizer)].optimizer.state_dict()
            [group], [slices] = zero["base_optimizer_state"], zero["param_slice_mappings"]
            for name, fragment in slices.items():
                moments[f"{prefix}.{name}"] = {key: value.reshape(()).clone() if key == "step" else
                                               value[fragment.start:fragment.start + fragment.numel].clone()
                                               for key, value in group.items()}
        else:
            state = optimizer.state_dict()["state"]
            for number, (name, p) in enumerate(network.named_parameters()):
                moments[f"{prefix}.{name}"] = {key: value.reshape(()).clone() if key == "step" else
                                               value.flatten().clone() for key, value in state.get(number, {}).items()}
    return moments


def merged_moments(ranks: list[dict[str, dict]], sliced: bool) -> dict[str, dict]:
    """Every rank's `adam_moments` as whole parameters: the `sliced` ones (ZeRO 1) end to end in rank order."""
    if not sliced:
        return ranks[0]
    merged = {}
    for moments in ranks:
        for name, state in moments.items():
            merged[name] = {key: value if key == "step" or name not in merged else
                            torch.cat([merged[name][key], value]) for key, value in state.items()}
    return merged


def saved_with_moments(rank: int, backend: str, zero_stage: int):
    config = equivalence_config()
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=make_sync(backend, zero_stage, config))
    trainer.train_step(*my_share(trainer, *global_batch(0)))
    return {"common": trainer.state_dict(), "shard": trainer.optimizer_state_dicts(), "moments": adam_moments(trainer)}


def resumed_moments(rank: int, backend: str, zero_stage: int, saved: list[dict]):
    """Load as eg3d.training.loop.read_state does: the optimizer shards whenever the checkpoint has them."""
    config = equivalence_config()
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=make_sync(backend, zero_stage, config))
    sharded = "base_optimizer_state" in saved[0]["shard"]["opt_G"]
    trainer.load_state_dict(saved[0]["common"], optimizer_shards=[s["shard"] for s in saved] if sharded else None)
    return adam_moments(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("saved_by,resumed_by", [
    (("deepspeed", 1, 2), ("ddp", 0, 1)),  # once KeyError: 'opt_G'
    (("ddp", 0, 1), ("deepspeed", 1, 2)),
    (("deepspeed", 1, 1), ("deepspeed", 1, 2)),  # once IndexError: the second rank found no shard of its number
], ids=["zero1x2-to-ddpx1", "ddpx1-to-zero1x2", "zero1x1-to-zero1x2"])
def test_adam_state_resumes_under_the_other_backend_and_world_size(saved_by, resumed_by):
    """The Adam moments resumed under another backend or world size are the saved ones, tensor for tensor. ZeRO
    steps each network's parameters as one: a parameter torch's Adam never stepped resumes there with zero
    moments, and the group's step count is its largest."""
    needs("deepspeed")
    (backend, zero_stage, world_size), (to_backend, to_stage, to_world_size) = saved_by, resumed_by
    saved = run_on_workers(saved_with_moments, world_size, args=(backend, zero_stage))
    resumed = merged_moments(run_on_workers(resumed_moments, to_world_size, args=(to_backend, to_stage, saved)),
                             sliced=to_stage == 1)
    expected = merged_moments([result["moments"] for result in saved], sliced=zero_stage == 1)
    assert resumed.keys() == expected.keys() and len(expected) > 100
    groups = {network: max(s["step"] for name, s in expected.items() if name.startswith(network) and s)
              for network in "GD"}
    for name, state in expected.items():
        if not state and to_stage == 1:
            torch.testing.assert_close(resumed[name]["exp_avg"], torch.zeros_like(resumed[name]["exp_avg"]), msg=name)
            continue
        assert resumed[name].keys() == state.keys(), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(resumed[name][key], state[key]), f"{name} {key}"
        assert resumed[name]["step"] == (groups[name[0]] if to_stage == 1 else state["step"]), (
            name, resumed[name]["step"], state["step"])


def test_object_collectives_at_world_size_1_exchange_nothing(tmp_path, monkeypatch):
    """One rank: all_gather_object and broadcast_object return the value without a gloo collective: there is
    nothing to exchange. Every collective is made to fail, so a call to one would show."""
    import torch.distributed as dist

    from cluster.backends import DDPSync

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        sync = DDPSync()

        def refuse(*args, **kwargs):
            raise AssertionError("a collective ran at world size 1")

        for name in ("all_gather_object", "broadcast_object_list", "all_gather", "broadcast", "all_reduce"):
            monkeypatch.setattr(dist, name, refuse)
        features = torch.randn(300, 16)
        gathered = sync.all_gather_object((features, [1, 2]))
        assert len(gathered) == 1 and gathered[0][0] is features and gathered[0][1] == [1, 2]
        assert sync.broadcast_object({"nimg": 12}) == {"nimg": 12}
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def gather_and_count_threads(rank: int):
    import torch.distributed as dist

    from cluster.backends import DDPSync

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    torch.set_num_threads(2)  # before gloo's threads first ask torch for a thread count
    torch.ones(2**22).add_(1)  # this thread's OpenMP team exists before counting
    mine = {"rank": rank, "features": torch.arange(10**6 + 7 * rank, dtype=torch.float32) + rank}  # sizes differ
    before = threads()
    ours = DDPSync().all_gather_object(mine)
    after = threads()
    theirs = [None, None]
    dist.all_gather_object(theirs, mine)  # the control: torch's gather starts an OpenMP team in a gloo thread
    return ours, theirs, before, after, threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_all_gather_object_on_two_workers_starts_no_openmp_team_in_gloo():
    """The gather returns every rank's object in rank order, and starts no thread: torch's all_gather_object
    copies inside a gloo worker thread, whose new OpenMP team made libgomp throttle every thread's spin-wait
    (more OpenMP threads than CPUs), and every later CPU step 1.5x slower (bench/collective_slowdown.py)."""
    results = run_on_workers(gather_and_count_threads, 2)
    for rank, (ours, theirs, before, after, after_control) in enumerate(results):
        for r in range(2):
            assert ours[r]["rank"] == r
            torch.testing.assert_close(ours[r]["features"], torch.arange(10**6 + 7 * r, dtype=torch.float32) + r,
                                       rtol=0, atol=0)
            torch.testing.assert_close(ours[r]["features"], theirs[r]["features"], rtol=0, atol=0)
        assert after == before, f"rank {rank}: the gather started {after - before} thread(s)"
        assert after_control > after, f"rank {rank}: torch's own gather no longer starts a thread; the count " \
                                      "cannot tell the two apart any more"
