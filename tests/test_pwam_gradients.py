"""PWAM's gradients are the true ones at every batch size, and LAVT's decoder gets contiguous maps.

torch 2.14.1's CPU instance norm returns a wrong input gradient for a 4D map at batch 1 when the output's
gradient arrives in channels_last strides, which is how PWAM's query receives it from the attention (found
while profiling the paper-size training step beside the official code, docs/performance.md).
``ris.models.blocks.InstanceNorm`` normalises the (B, C, H*W) view instead, as the official code does;
``torch.autograd.gradcheck`` (float64, finite differences) fails at batch 1 with ``nn.InstanceNorm2d``.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from ris.models.blocks import ChannelNorm, InstanceNorm, PixelWordAttention


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("lang_norm", ["instance", "none"])
def test_pwam_gradients_match_finite_differences(batch, lang_norm):
    torch.manual_seed(0)
    pwam = PixelWordAttention(8, 16, lang_norm=lang_norm).double()
    words = torch.randn(batch, 6, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * batch)
    vis = torch.randn(batch, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    query = pwam.query[0].weight

    def run(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(pwam, {"query.0.weight": w}, (v, words, mask))

    assert gradcheck(run, (vis, query.detach().clone().requires_grad_()))


def test_instance_norm_equals_torch_forward():
    x = torch.randn(2, 8, 5, 3)
    assert torch.equal(InstanceNorm(8)(x), torch.nn.InstanceNorm2d(8)(x))
    assert InstanceNorm(8).state_dict() == {}  # checkpoints keep their keys


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_norm_keeps_the_input_layout(layout):
    x = torch.randn(1, 8, 5, 5).contiguous(memory_format=layout)
    y = ChannelNorm(8)(x)
    assert y.is_contiguous(memory_format=layout)
    assert torch.allclose(y, torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2))
