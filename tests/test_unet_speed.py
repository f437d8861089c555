"""The fused upsample + concatenation is the same function as F.interpolate + torch.cat, gradients included."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from defectseg.models.segmentation import count_parameters, unet_paper
from defectseg.models.unet_paper import upsample_concat


def reference(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.interpolate(low, size=skip.shape[-2:], mode="nearest"), skip], dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_upsample_concat_matches_interpolate_and_cat_forward_and_backward(dtype):
    generator = torch.Generator().manual_seed(0)
    low = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64).to(dtype)
    skip = torch.randn(2, 3, 6, 8, generator=generator, dtype=torch.float64).to(dtype)
    grad = torch.randn(2, 8, 6, 8, generator=generator, dtype=torch.float64).to(dtype)
    results = []
    for fn in (upsample_concat, reference):
        a = low.contiguous(memory_format=torch.channels_last).requires_grad_()
        b = skip.contiguous(memory_format=torch.channels_last).requires_grad_()
        out = fn(a, b)
        out.backward(grad)
        results.append((out, a.grad, b.grad))
    for fused, expected in zip(*results):
        assert fused.dtype == expected.dtype and fused.shape == expected.shape
        tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-2, "atol": 2e-2}
        torch.testing.assert_close(fused, expected, **tolerance)  # sums in another order
    assert results[0][0].is_contiguous(memory_format=torch.channels_last)  # the fast path ran
    assert torch.autograd.gradcheck(
        upsample_concat,
        (
            low[:1, :2].double().contiguous(memory_format=torch.channels_last).requires_grad_(),
            skip[:1, :2].double().contiguous(memory_format=torch.channels_last).requires_grad_(),
        ),
    )


def test_paper_unet_keeps_the_papers_parameter_counts_and_outputs_with_the_fused_decoder():
    torch.manual_seed(0)
    model = unet_paper().eval()
    assert (
        count_parameters(model) == 7_846_657
        and count_parameters(model.decoder) + count_parameters(model.segmentation_head) == 3_134_433
    )
    small = unet_paper(channels=(4, 8, 16)).eval()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = small(images)  # channels-first input: the reference path
        fused = small.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
