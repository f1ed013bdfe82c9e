"""Adam's state between torch's per-parameter form and DeepSpeed ZeRO 1's flat shards, on hand-made values (no
DeepSpeed needed; tests/test_distributed.py checks the same against DeepSpeed's own engines)."""

import pytest
import torch

from eg3d.training.optimizer_state import (adam_state_from_zero_shards, torch_optimizer_state,
                                           zero_shards_from_adam_state)


def parameters():
    """A (3 elements), a frozen one (left out of ZeRO's flat layout) and B (1 x 2), in one group."""
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1, 2))
    return [[a, torch.nn.Parameter(torch.zeros(2), requires_grad=False), b]]


def shard(step: float, exp_avg: list[float]) -> dict:
    values = torch.tensor(exp_avg)
    return {"base_optimizer_state": [{"step": torch.tensor([step]), "exp_avg": values, "exp_avg_sq": values * 10}],
            "param_alignment_paddings": [[1, 0]]}


# Flat layout [a0 a1 a2 padding b0 b1], cut after 2 and 4 elements over 3 ranks.
SHARDS = [shard(5, [1, 2]), shard(5, [3, 0]), shard(5, [5, 6])]


def test_zero_shards_become_per_parameter_state():
    state = adam_state_from_zero_shards(SHARDS, parameters())
    assert state.keys() == {0, 2}  # the frozen parameter (number 1) has none
    assert torch.equal(state[0]["exp_avg"], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(state[2]["exp_avg"], torch.tensor([[5.0, 6.0]]))
    assert torch.equal(state[2]["exp_avg_sq"], torch.tensor([[50.0, 60.0]]))
    assert state[0]["step"].shape == () and state[0]["step"] == 5  # torch's Adam keeps a 0-dim step


def test_torch_adam_loads_zero_shards():
    groups = parameters()
    adam = torch.optim.Adam(groups[0])
    adam.load_state_dict(torch_optimizer_state(SHARDS, adam))
    assert torch.equal(adam.state[groups[0][0]]["exp_avg_sq"], torch.tensor([10.0, 20.0, 30.0]))
    unsharded = adam.state_dict()
    assert torch_optimizer_state([unsharded], adam) is unsharded  # torch's own form passes as it is


def test_per_parameter_state_is_cut_into_any_number_of_shards():
    groups = parameters()
    state = {0: {"step": torch.tensor(3.0), "exp_avg": torch.tensor([1.0, 2.0, 3.0]),
                 "exp_avg_sq": torch.tensor([4.0, 5.0, 6.0])}}  # B never stepped
    groups[0][2].data = torch.tensor([[7.0, 8.0]])
    shards = zero_shards_from_adam_state(state, groups, [[1, 0]], ranks=2)
    assert [s["base_optimizer_state"][0]["exp_avg"].tolist() for s in shards] == [[1, 2, 3], [0, 0, 0]]
    assert [s["single_partition_of_fp32_groups"][0].tolist() for s in shards] == [[0, 0, 0], [0, 7, 8]]
    assert [s["base_optimizer_state"][0]["step"] for s in shards] == [3, 3]
    back = adam_state_from_zero_shards([{**s, "param_alignment_paddings": [[1, 0]]} for s in shards], groups)
    assert torch.equal(back[0]["exp_avg_sq"], state[0]["exp_avg_sq"])
    assert torch.equal(back[2]["exp_avg"], torch.zeros(1, 2))


def test_zero_shards_of_another_architecture_are_refused():
    with pytest.raises(ValueError, match="hold 5 values of exp_avg for parameter group 0, whose 2 trainable parameters "
                                         "take 6: they were saved for another architecture"):
        adam_state_from_zero_shards(SHARDS[:2] + [shard(5, [5])], parameters())
