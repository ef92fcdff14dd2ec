"""Training-time quantizers: the contract's rounding, straight-through gradients, grids."""

from __future__ import annotations

import torch

from fiqnn.train.quantizers import DorefaWeight, LsqAct, LsqWeight, round_half_up


def test_round_half_up_is_the_contract_not_torch_round():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.51])
    assert round_half_up(x).tolist() == [1, 2, 3, 0, -1, -2, 0, -1]
    assert torch.round(x).tolist() != round_half_up(x).tolist()  # half to even differs on ties


def test_round_half_up_straight_through_gradient():
    x = torch.tensor([0.3, 1.7, -2.5], requires_grad=True)
    round_half_up(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_lsq_weight_lands_on_the_signed_narrow_grid():
    w = torch.randn(6, 3, 3, 3)
    for bits in (2, 4, 8):
        wq = LsqWeight(bits, w, per_channel=True)
        codes = wq(w) / wq.step.abs()
        q = 2 ** (bits - 1) - 1
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.abs().max() <= q + 1e-4 and codes.abs().max() >= q - 1e-4


def test_lsq_weight_step_gets_gradient():
    w = torch.randn(4, 8)
    wq = LsqWeight(4, w, per_channel=False)
    (wq(w) ** 2).sum().backward()
    assert wq.step.grad is not None and wq.step.grad.abs() > 0


def test_dorefa_weight_grid():
    w = torch.randn(5, 7)
    out = DorefaWeight(3)(w) * 3
    assert torch.equal(out, out.round()) and out.abs().max() == 3


def test_lsq_act_codes_and_calibration():
    act = LsqAct(4)
    x = torch.rand(1000) * 3
    act.init_step(x)
    codes = act(x)
    assert codes.min() >= 0 and codes.max() == 15 and torch.equal(codes, codes.round())
    assert 0.1 < act.step.item() < 0.25  # about 3 / 15
