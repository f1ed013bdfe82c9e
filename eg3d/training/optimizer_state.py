"""Adam's state in a checkpoint, portable between the backends and any number of workers.

A checkpoint keeps the optimizer state in the form its backend holds it:

- torch's `Optimizer.state_dict()`, in trainer.pt (one process, `ddp`, DeepSpeed ZeRO 0): per parameter,
  numbered in the optimizer's order, each with its own step count;
- DeepSpeed ZeRO 1's elastic shards, one per rank (optimizer-rankNNNN.pt): for each parameter group, that
  rank's slice of the group's trainable parameters flattened end to end (each but the last followed by its
  alignment padding), the moments keyed as torch's Adam keys them, and one step count for the group.

`adam_state_from_zero_shards` turns the second into torch's per-parameter state, and
`zero_shards_from_adam_state` cuts torch's state into shards for any number of ranks (cluster/backends.py hands
those to DeepSpeed's own loader), so a checkpoint resumes under either backend on any number of workers.
DeepSpeed's key names are spelled out here: training code imports no DeepSpeed. A checkpoint also moves between
the CPU's Adam and CUDA's fused one (eg3d.training.trainer.FUSED_ADAM_DEVICES): `torch_optimizer_state` gives
it the loading optimizer's `fused` setting, so that torch's loader puts the step counts where that Adam keeps
them (fused: on the parameters' device).
"""

import torch

ZERO_GROUP_STATES = "base_optimizer_state"  # deepspeed.checkpoint.constants.BASE_OPTIMIZER_STATE
ZERO_FP32_WEIGHTS = "single_partition_of_fp32_groups"  # ...SINGLE_PARTITION_OF_FP32_GROUPS
ZERO_ALIGNMENT_PADDINGS = "param_alignment_paddings"  # ...PARAM_ALIGNMENT_PADDINGS

STEP = "step"  # Adam's step count; every other tensor in its state holds one value per parameter element
ParamGroups = list[list[torch.Tensor]]  # the parameters of each of an optimizer's groups, in its order
AdamState = dict[int, dict]  # torch's per-parameter state: {parameter number: {"step", "exp_avg", ...}}


def is_zero_shard(state: dict) -> bool:
    return ZERO_GROUP_STATES in state


def optimized(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters ZeRO flattens: trainable, with at least one element (DeepSpeed's is_optimized_parameter)."""
    return [p for p in params if p.requires_grad and p.numel() > 0]


def flat_spans(params: list[torch.Tensor], paddings: list[int] | None) -> list[tuple[int, int]]:
    """(offset, length) of each parameter in their flat layout, with `paddings[i]` elements after parameter i."""
    spans, offset = [], 0
    for p, padding in zip(params, paddings or [0] * len(params)):
        spans.append((offset, p.numel()))
        offset += p.numel() + padding
    return spans


def torch_optimizer_state(states: list[dict], optimizer: torch.optim.Optimizer) -> dict:
    """What `optimizer.load_state_dict` takes, from a checkpoint's optimizer state in either form (`states`: one
    entry, or every rank's ZeRO shard), with `optimizer`'s own `fused` setting; `optimizer` holds its parameters
    unflattened."""
    if not is_zero_shard(states[0]):
        return with_fused_setting_of(optimizer, states[0])
    groups = [group["params"] for group in optimizer.param_groups]
    return {"state": adam_state_from_zero_shards(states, groups),
            "param_groups": optimizer.state_dict()["param_groups"]}


def with_fused_setting_of(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """torch's optimizer `state` (as saved) with the `fused` setting of `optimizer`'s parameter groups: `state`
    itself when they agree."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    if [group.get("fused") for group in state["param_groups"]] == fused:
        return state
    return {**state, "param_groups": [{**group, "fused": own} for group, own in zip(state["param_groups"], fused)]}


def adam_state_from_zero_shards(shards: list[dict], groups: ParamGroups) -> AdamState:
    """torch's per-parameter Adam state held by ZeRO 1 `shards` (every rank's, in rank order), for an optimizer
    with parameter `groups`. Every trainable parameter takes its group's step count."""
    state, first = {}, 0
    for g, params in enumerate(groups):
        pieces = [shard[ZERO_GROUP_STATES][g] for shard in shards]
        flat = {key: torch.cat([piece[key] for piece in pieces]) for key, value in pieces[0].items()
                if torch.is_tensor(value) and key != STEP}
        # DeepSpeed's elastic loader leaves the step a one-element vector; torch's Adam keeps a 0-dim tensor.
        scalars = {key: value.reshape(()).clone() if torch.is_tensor(value) else value
                   for key, value in pieces[0].items() if key not in flat}
        trained = optimized(params)
        paddings = shards[0].get(ZERO_ALIGNMENT_PADDINGS, [None] * len(groups))[g]
        spans = flat_spans(trained, paddings)
        length = spans[-1][0] + spans[-1][1] if spans else 0
        for key, values in flat.items():
            if values.numel() != length:
                raise ValueError(f"the ZeRO optimizer shards hold {values.numel()} values of {key} for parameter group "
                                 f"{g}, whose {len(trained)} trainable parameters take {length}: they were saved "
                                 f"for another architecture")
        number = {id(p): first + i for i, p in enumerate(params)}
        for p, (offset, size) in zip(trained, spans):
            moments = {key: values[offset:offset + size].view_as(p).clone() for key, values in flat.items()}
            state[number[id(p)]] = {**{key: value.clone() if torch.is_tensor(value) else value
                                       for key, value in scalars.items()}, **moments}
        first += len(params)
    return state


def zero_shards_from_adam_state(state: AdamState, groups: ParamGroups, paddings: list[list[int]] | None,
                                ranks: int) -> list[dict]:
    """torch's per-parameter Adam `state` for an optimizer with parameter `groups`, cut into `ranks` ZeRO 1 shards
    (their moments and fp32 weights; `paddings`: ZeRO's alignment padding after each trainable parameter). A
    parameter without state (never stepped) gets zero moments; each group takes the largest step count of its
    parameters, as ZeRO steps a group as a whole."""
    shards = [{ZERO_GROUP_STATES: [], ZERO_FP32_WEIGHTS: []} for _ in range(ranks)]
    first = 0
    for g, params in enumerate(groups):
        trained = optimized(params)
        trained_ids = {id(p) for p in trained}
        own = [state.get(first + i, {}) for i, p in enumerate(params) if id(p) in trained_ids]
        keys = sorted({key for s in own for key, value in s.items() if torch.is_tensor(value) and key != STEP})
        flat = {key: flatten([s.get(key, torch.zeros_like(p)) for s, p in zip(own, trained)], paddings, g)
                for key in keys}
        steps = [torch.as_tensor(s[STEP], dtype=torch.float32).reshape(()) for s in own if STEP in s]
        weights = flatten([p.detach().float() for p in trained], paddings, g)
        for r, shard in enumerate(shards):
            group_state = {key: torch.tensor_split(values, ranks)[r].clone() for key, values in flat.items()}
            if steps:
                group_state[STEP] = torch.stack(steps).max()
            shard[ZERO_GROUP_STATES].append(group_state)
            shard[ZERO_FP32_WEIGHTS].append(torch.tensor_split(weights, ranks)[r].clone())
        first += len(params)
    return shards


def flatten(tensors: list[torch.Tensor], paddings: list[list[int]] | None, group: int) -> torch.Tensor:
    """`tensors` end to end as one float32 vector, each followed by its alignment padding (zeros)."""
    pieces = []
    for tensor, padding in zip(tensors, paddings[group] if paddings else [0] * len(tensors)):
        pieces += [tensor.detach().float().flatten(), torch.zeros(padding)]
    return torch.cat(pieces) if pieces else torch.zeros(0)
