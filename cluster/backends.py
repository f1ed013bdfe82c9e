"""How workers combine gradients: `ddp` (default) and `deepspeed`, both over torch.distributed
(gloo on CPU, NCCL on GPU), both plugged into the trainer as its `GradientSync`.

`ddp` does not wrap the networks in `DistributedDataParallel`. The lazy R1 penalty differentiates D's
output with respect to its input and then backpropagates through that gradient (a double backward),
which DDP's bucketed reduction hooks do not support; and one phase runs several micro-batches before a
single optimizer step. So, like the reference implementation, each phase accumulates its micro-batch
gradients locally and then reduces them once, as one flattened all-reduce per network.

`deepspeed` wraps each network and its own Adam in a DeepSpeed engine (ZeRO stage 0 or 1, from
`distributed.zero_stage`). Gradient accumulation is ours (`managed_gradient_accumulation: false`):
every micro-batch goes through `engine.backward`, and `engine.step()` reduces and applies once per
phase. Losses call the raw modules (`engine.module`), since a G loss runs through D's network while
D's engine is not the one stepping. At ZeRO 1 each rank holds a shard of the optimizer state; the
shards are saved per rank in DeepSpeed's elastic format. A checkpoint's optimizer state, in either backend's
form, is turned into torch's per-parameter form and cut into as many shards as there are ranks now
(eg3d.training.optimizer_state) before DeepSpeed loads it: it resumes under any world size and either backend.

The DeepSpeed config is built here. `distributed.deepspeed_config` names a JSON file (any fsspec URL) whose
communication settings (bucket sizes, overlap, communication dtype) are merged over it; the keys that the
world-size-independent batch handling, the ZeRO stage and the checkpoints depend on stay ours.
"""

import copy
import json
import pickle
from dataclasses import dataclass

import torch
import torch.distributed as dist

from eg3d.config import BatchSplit, batch_split
from eg3d.training.optimizer_state import (ZERO_ALIGNMENT_PADDINGS, ZERO_FP32_WEIGHTS, ZERO_GROUP_STATES,
                                           adam_state_from_zero_shards, is_zero_shard, zero_shards_from_adam_state)
from eg3d.training.trainer import GradientSync, Phase, Trainer

BACKENDS = ("ddp", "deepspeed")


class DistributedSync(GradientSync):
    """Shared by both backends: rank, world size and collectives of the default process group."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks (a new tensor on `tensor`'s device)."""
        reduced = tensor.to(self.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def all_gather_object(self, value) -> list:
        """Every rank's picklable `value`, in rank order (one rank: `[value]`, with no collective).

        Gathered as a sum: each rank writes its pickled bytes into its own zeroed slot of a [world size, longest]
        uint8 buffer, and one all_reduce adds the slots up. torch's `all_gather_object` copies the gathered
        bytes inside one of gloo's worker threads, and a copy of more than 32k elements starts an OpenMP team
        there. With more OpenMP threads than CPUs, libgomp cuts every thread's spin-wait from 300,000 to 100
        spins (the GOMP_SPINCOUNT documentation) for the rest of the process: on 2 cores with 2 torch threads,
        each later training step took 1.5x as long (bench/collective_slowdown.py). An all_reduce of one tensor
        runs in place, with no such copy.
        """
        if self.world_size == 1:
            return [value]
        payload = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)
        sizes = torch.zeros(self.world_size, dtype=torch.int64)
        sizes[self.rank] = len(payload)
        sizes = self.all_reduce_sum(sizes).tolist()
        slots = torch.zeros(self.world_size, max(sizes), dtype=torch.uint8)
        slots[self.rank, :len(payload)] = payload
        slots = self.all_reduce_sum(slots)
        return [pickle.loads(slots[rank, :size].numpy().tobytes()) for rank, size in enumerate(sizes)]

    def broadcast_object(self, value):
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class DDPSync(DistributedSync):
    def setup(self, trainer: Trainer) -> None:
        for network in (trainer.G, trainer.D, trainer.G_ema):  # identical starting points on every rank
            for tensor in [*network.parameters(), *network.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def reduce_gradients(self, phase: Phase) -> None:
        """Mean of the accumulated gradients over ranks, as one flattened all-reduce."""
        # A parameter a phase does not reach keeps no gradient (Adam then leaves it and its moments
        # alone); which parameters those are is the same on every rank, as all run the same code.
        params = [p for p in phase.network.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = self.all_reduce_sum(flat).div_(self.world_size)
        for p, reduced in zip(params, flat.split([p.numel() for p in params])):
            p.grad = reduced.view_as(p).clone()


# Top-level keys a DeepSpeed file may add to ours: how gradients travel, and DeepSpeed's own diagnostics.
FILE_KEYS = ("zero_optimization", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
             "wall_clock_breakdown", "comms_logger")
# Keys of ours that a file may repeat but not change, and why.
_SPLIT = ("run.batch_size split over the workers in micro-batches of run.micro_batch, recomputed at every "
          "(re)start (DeepSpeed wants train_batch_size = micro-batch x accumulation steps x workers, so with "
          "uneven shares the three describe the largest share)")
OWNED_KEYS = {
    "train_batch_size": _SPLIT,
    "train_micro_batch_size_per_gpu": _SPLIT,
    "gradient_accumulation_steps": _SPLIT,
    "managed_gradient_accumulation": "the trainer accumulates its micro-batches itself",
    "zero_optimization.stage": "distributed.zero_stage (--set distributed.zero_stage=0|1)",
    "zero_optimization.elastic_checkpoint": "optimizer shards must reload under any world size",
    "zero_optimization.round_robin_gradients": "checkpoints keep the parameters in the optimizer's order, so that "
                                               "they resume under either backend",
    "zero_optimization.overlap_comm": "DeepSpeed 0.19 overlaps communication with a backward pass only at ZeRO 2 "
                                      "when the trainer accumulates micro-batches itself",
    "gradient_clipping": "EG3D does not clip gradients, under either backend",
    "steps_per_print": "progress is reported by eg3d-train",
}


def deepspeed_config(*, zero_stage: int, split: BatchSplit) -> dict:
    """The config every DeepSpeed engine is built with, before a file's settings are merged over it.

    DeepSpeed insists on train_batch_size = micro-batch x accumulation steps x world size. Its batch
    settings only count samples here (our losses carry their own weights, and we call step() at the
    accumulation boundary), so under an uneven split they describe the largest share; with an even split
    train_batch_size is run.batch_size."""
    micro, steps = split.largest_micro_batch, split.accumulation_steps
    return {
        "train_batch_size": micro * steps * split.world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": steps,
        "managed_gradient_accumulation": False,
        "zero_optimization": {"stage": zero_stage, "elastic_checkpoint": True, "overlap_comm": False,
                              "round_robin_gradients": False},
        "gradient_clipping": 0.0,  # EG3D does not clip; DeepSpeed 0.19 clips at 1.0 unless told
        "steps_per_print": 2 ** 62,
    }


@dataclass(frozen=True)
class DeepSpeedFile:
    """The settings of a DeepSpeed JSON file, read once by the driver and sent to the workers."""

    url: str
    settings: dict

    @classmethod
    def load(cls, url: str) -> "DeepSpeedFile":
        from dataloading import storage

        try:
            settings = json.loads(storage.read_bytes(url))
        except json.JSONDecodeError as error:
            raise ValueError(f"distributed.deepspeed_config {url}: not valid JSON: {error}") from None
        if not isinstance(settings, dict):
            raise ValueError(f"distributed.deepspeed_config {url}: expected a JSON object, got {type(settings).__name__}")
        return cls(url, settings)

    def merged_over(self, ours: dict) -> dict:
        """`ours` with this file's settings merged over it (one level deep, as zero_optimization is a section)."""
        where = f"distributed.deepspeed_config {self.url}"
        unknown = sorted(set(self.settings) - set(ours) - set(FILE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unsupported key(s) {', '.join(unknown)}; a DeepSpeed file here may set "
                             f"{', '.join(FILE_KEYS)} (the batch keys and the ZeRO stage are eg3d-train's own)")
        merged = copy.deepcopy(ours)
        for key, value in self.settings.items():
            if isinstance(ours.get(key), dict):
                if not isinstance(value, dict):
                    raise ValueError(f"{where}: {key} must be a JSON object, got {value!r}")
                merged[key].update(value)
            else:
                merged[key] = value
        for path, reason in OWNED_KEYS.items():
            section, _, name = path.rpartition(".")
            theirs = self.settings.get(section, {}) if section else self.settings
            expected = ours[section][name] if section else ours[name]
            if name in theirs and theirs[name] != expected:
                raise ValueError(f"{where}: {path} is {theirs[name]!r}, but it must be {expected!r}, set by eg3d-train "
                                 f"from {reason}; remove it from the file")
        return merged


def load_deepspeed_file(config) -> DeepSpeedFile | None:
    """distributed.deepspeed_config, read by the driver and checked for every world size the run may take."""
    d = config.distributed
    if d.deepspeed_config is None:
        return None
    file = DeepSpeedFile.load(d.deepspeed_config)
    for world_size in range(d.min_workers, d.max_workers + 1):
        file.merged_over(deepspeed_config(zero_stage=d.zero_stage, split=batch_split(config, world_size)))
    return file


class DeepSpeedSync(DistributedSync):
    def __init__(self, *, zero_stage: int, file: DeepSpeedFile | None = None):
        super().__init__()
        if zero_stage not in (0, 1):
            raise ValueError(f"distributed.zero_stage must be 0 or 1 for EG3D, got {zero_stage}")
        self.zero_stage = zero_stage
        self.file = file
        self.optimizer_sharded = zero_stage > 0
        self.engines: dict[int, object] = {}  # id(network) or id(optimizer) -> engine
        self.param_groups: dict[int, list[list[torch.Tensor]]] = {}  # id(optimizer) -> its groups, unflattened
        self._unreached: list[torch.nn.Parameter] = []

    def setup(self, trainer: Trainer) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend=dist.get_backend())  # adopts the existing process group
        config = deepspeed_config(zero_stage=self.zero_stage, split=trainer.split)
        if self.file is not None:
            config = self.file.merged_over(config)
        for network, optimizer in ((trainer.G, trainer.opt_G), (trainer.D, trainer.opt_D)):
            self.param_groups[id(optimizer)] = [list(group["params"]) for group in optimizer.param_groups]
            engine, _, _, _ = deepspeed.initialize(model=network, optimizer=optimizer, config=config)
            self.engines[id(network)] = self.engines[id(optimizer)] = engine
            if self.zero_stage == 0:
                optimizer.register_step_pre_hook(self._drop_unreached_gradients)
        for tensor in [*trainer.G_ema.parameters(), *trainer.G_ema.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def backward(self, phase: Phase, loss: torch.Tensor) -> None:
        self.engines[id(phase.network)].backward(loss, scale_wrt_gas=False)  # our losses carry their weights

    def reduce_gradients(self, phase: Phase) -> None:
        """Left to the engine, which reduces in `optimizer_step`."""

    def optimizer_step(self, phase: Phase) -> None:
        """The accumulation boundary: the engine reduces, then updates.

        DeepSpeed's reduction gives a zero gradient to parameters the phase did not reach (the
        super-resolution network in the density phase), where one process leaves them without one and
        Adam leaves them alone. At ZeRO 0 the engine steps our own Adam, so those gradients are removed
        again just before it runs. At ZeRO 1 Adam runs on flat shards and cannot skip part of one: such
        parameters get a zero-gradient update (their moments decay; with beta1 = 0 they do not move).
        """
        engine = self.engines[id(phase.network)]
        self._unreached = [p for p in phase.network.parameters() if p.requires_grad and p.grad is None]
        engine.step()
        self._unreached = []

    def _drop_unreached_gradients(self, optimizer, args, kwargs) -> None:
        for p in self._unreached:
            p.grad = None

    def zero_grad(self, phase: Phase) -> None:
        engine = self.engines[id(phase.network)]
        engine.optimizer.zero_grad()
        engine.zero_grad()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        state = self.engines[id(optimizer)].optimizer.state_dict()
        if self.optimizer_sharded:
            # DeepSpeed's elastic loader wants a step count per parameter group, as its own Adam keeps;
            # torch's Adam keeps it per parameter, in the state that is saved and restored anyway.
            from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE_STEP

            state.setdefault(BASE_OPTIMIZER_STATE_STEP, None)
        return state

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, states: list[dict]) -> None:
        """`states`: a checkpoint's optimizer state in either backend's form, saved under any world size."""
        if not self.optimizer_sharded:  # ZeRO 0: the engine steps our own Adam
            super().load_optimizer_state_dict(optimizer, states)
            return
        wrapped, groups = self.engines[id(optimizer)].optimizer, self.param_groups[id(optimizer)]
        adam = adam_state_from_zero_shards(states, groups) if is_zero_shard(states[0]) else states[0]["state"]
        # DeepSpeed's loader reads the shard of this rank's number and merges all of them: one per rank now.
        current = self.optimizer_state_dict(optimizer)  # the settings every shard carries (loss scaler, version, ...)
        shards = zero_shards_from_adam_state(adam, groups, current.get(ZERO_ALIGNMENT_PADDINGS), self.world_size)
        settings = {key: value for key, value in current.items() if key not in (ZERO_GROUP_STATES, ZERO_FP32_WEIGHTS)}
        wrapped.load_state_dict([{**settings, **shard} for shard in shards], load_optimizer_states=True,
                                load_from_fp32_weights=True)


def make_sync(backend: str, *, zero_stage: int = 0, deepspeed_file: DeepSpeedFile | None = None) -> DistributedSync:
    if backend == "ddp":
        return DDPSync()
    if backend == "deepspeed":
        return DeepSpeedSync(zero_stage=zero_stage, file=deepspeed_file)
    raise ValueError(f"distributed.backend must be one of {BACKENDS}, got {backend!r}")
