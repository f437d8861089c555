"""Dice as the paper scores it (per image, then averaged) and the BCE + soft-Dice training loss."""

from __future__ import annotations

import math

import pytest
import torch

from defectseg.training.losses import BCEDiceLoss, soft_dice_loss
from defectseg.training.metrics import DefectDice


def mask(*rows: str) -> torch.Tensor:
    """'1.1' style rows -> 1x1xHxW bool."""
    return torch.tensor([[c == "1" for c in row] for row in rows]).view(1, 1, len(rows), len(rows[0]))


def dice_of(pred: torch.Tensor, truth: torch.Tensor, **kwargs) -> float:
    metric = DefectDice(**kwargs)
    metric.update(pred, truth)
    return float(metric.compute())


# --- DefectDice -------------------------------------------------------------------------------


def test_perfect_prediction_scores_one():
    truth = mask("0110", "0110", "0000")
    assert dice_of(truth, truth) == pytest.approx(1.0)


def test_disjoint_prediction_scores_zero():
    assert dice_of(mask("1100", "0000"), mask("0011", "0000")) == pytest.approx(0.0)


def test_partial_overlap_matches_hand_computation():
    pred, truth = mask("1110"), mask("0111")  # |P|=3, |T|=3, |P&T|=2
    assert dice_of(pred, truth) == pytest.approx(2 * 2 / (3 + 3))


def test_dice_is_averaged_per_image_not_pooled():
    # image A: |P|=|T|=|P&T|=8 -> 1.0; image B: |P|=1, |T|=3, |P&T|=1 -> 2/4 = 0.5
    truth = torch.cat([mask("1111", "1111"), mask("1110", "0000")])
    pred = torch.cat([mask("1111", "1111"), mask("1000", "0000")])
    pooled = 2 * (8 + 1) / ((8 + 1) + (8 + 3))  # 0.9: what summing pixels over the batch would give
    score = dice_of(pred, truth)
    assert score == pytest.approx(0.75)
    assert not math.isclose(score, pooled, abs_tol=1e-3)


def test_empty_truth_and_empty_prediction_score_empty_score_not_nan():
    empty = mask("0000", "0000")
    score = dice_of(empty, empty)
    assert not math.isnan(score) and score == pytest.approx(1.0)
    assert dice_of(empty, empty, empty_score=0.25) == pytest.approx(0.25)


def test_empty_truth_with_a_false_positive_scores_zero():
    assert dice_of(mask("0100", "0000"), mask("0000", "0000")) == pytest.approx(0.0)


def test_missed_defect_scores_zero():
    assert dice_of(mask("0000", "0000"), mask("0110", "0000")) == pytest.approx(0.0)


def test_empty_image_counts_in_the_average():
    truth = torch.cat([mask("0000"), mask("1100")])
    pred = torch.cat([mask("0000"), mask("1000")])  # 1.0 and 2/3
    assert dice_of(pred, truth) == pytest.approx((1.0 + 2 / 3) / 2)


def test_accumulates_over_update_calls():
    metric = DefectDice()
    metric.update(mask("1111"), mask("1111"))  # 1.0
    metric.update(mask("1000"), mask("1110"))  # 0.5
    metric.update(mask("0000"), mask("0001"))  # 0.0
    assert float(metric.compute()) == pytest.approx(0.5)
    metric.reset()
    metric.update(mask("0110"), mask("0110"))
    assert float(metric.compute()) == pytest.approx(1.0)


def test_per_image_keeps_the_update_order():
    metric = DefectDice()
    metric.update(torch.cat([mask("1000"), mask("1111")]), torch.cat([mask("1110"), mask("1111")]))
    metric.update(mask("0000"), mask("0000"))
    metric.update(mask("1110"), mask("0111"))
    assert metric.per_image().tolist() == pytest.approx([0.5, 1.0, 1.0, 2 / 3])


def test_accepts_bool_and_integer_masks_alike():
    pred, truth = mask("1110"), mask("0111")
    assert dice_of(pred.long(), truth.float()) == pytest.approx(dice_of(pred, truth))


def test_compute_before_update_is_nan_and_per_image_empty():
    metric = DefectDice()
    assert metric.per_image().numel() == 0
    with pytest.warns(UserWarning):
        assert math.isnan(float(metric.compute()))


def test_indices_give_dataset_order_and_drop_padded_duplicates():
    """What a DistributedSampler delivers: images out of order, the last rank padded with a repeat."""
    metric = DefectDice()
    metric.update(
        torch.cat([mask("1000"), mask("1111")]), torch.cat([mask("1100"), mask("1111")]), index=torch.tensor([1, 0])
    )  # 2/3, 1.0
    metric.update(mask("1100"), mask("1100"), index=torch.tensor([2]))  # 1.0
    metric.update(mask("1000"), mask("1100"), index=torch.tensor([1]))  # image 1 again (padding)
    assert metric.per_image().tolist() == pytest.approx([1.0, 2 / 3, 1.0])
    assert float(metric.compute()) == pytest.approx((1.0 + 2 / 3 + 1.0) / 3)


def test_indices_for_some_updates_only_are_refused():
    metric = DefectDice()
    metric.update(mask("1000"), mask("1100"), index=torch.tensor([0]))
    metric.update(mask("1000"), mask("1100"))
    with pytest.raises(ValueError, match="indices"):
        metric.compute()


# --- losses -----------------------------------------------------------------------------------


def confident_logits(target: torch.Tensor, margin: float = 20.0) -> torch.Tensor:
    return (target.float() * 2 - 1) * margin


@pytest.fixture
def target() -> torch.Tensor:
    t = torch.zeros(2, 1, 8, 8)
    t[0, 0, 2:5, 2:5] = 1
    t[1, 0, 0:2, :] = 1
    return t


def test_bce_dice_is_near_zero_for_perfect_confident_logits(target):
    assert float(BCEDiceLoss()(confident_logits(target), target)) < 1e-3
    assert float(soft_dice_loss(confident_logits(target), target)) < 1e-3


def test_wrong_logits_cost_more_than_right_ones(target):
    loss = BCEDiceLoss()
    right = float(loss(confident_logits(target, 3.0), target))
    unsure = float(loss(torch.zeros_like(target), target))
    wrong = float(loss(-confident_logits(target, 3.0), target))
    assert right < unsure < wrong
    # complement of the truth: intersection 0, |P| + |T| = 64 pixels, smooth 1 -> 1 - 1/65 per image
    assert float(soft_dice_loss(-confident_logits(target), target)) == pytest.approx(1 - 1 / 65, abs=1e-5)


def test_losses_are_finite_for_empty_masks():
    empty = torch.zeros(2, 1, 8, 8)
    assert float(soft_dice_loss(confident_logits(empty), empty)) < 1e-3
    for logits in (confident_logits(empty), torch.zeros_like(empty), torch.full_like(empty, 30.0)):
        value = BCEDiceLoss()(logits, empty)
        assert torch.isfinite(value)
    assert float(BCEDiceLoss()(torch.full_like(empty, 30.0), empty)) > 1.0  # false positives everywhere cost


def test_gradients_flow_to_the_logits(target):
    logits = torch.zeros_like(target, requires_grad=True)
    BCEDiceLoss()(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # pushing up where the defect is, down elsewhere
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()


def test_soft_dice_alone_has_gradient(target):
    logits = torch.zeros_like(target, requires_grad=True)
    soft_dice_loss(logits, target).backward()
    assert logits.grad.abs().sum() > 0


def test_weights_select_the_terms(target):
    logits = torch.randn_like(target)
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
    dice = float(soft_dice_loss(logits, target))
    assert float(BCEDiceLoss(1.0, 0.0)(logits, target)) == pytest.approx(bce)
    assert float(BCEDiceLoss(0.0, 1.0)(logits, target)) == pytest.approx(dice)
    assert float(BCEDiceLoss(2.0, 0.5)(logits, target)) == pytest.approx(2 * bce + 0.5 * dice)
