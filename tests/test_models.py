"""The paper's U-Net, its freeze policies and stage 1's classifier: counts, shapes, what trains."""

from __future__ import annotations

import pytest
import torch

from defectseg.models import EncoderClassifier, FreezePolicy, parameter_counts, unet_paper
from defectseg.models.segmentation import FeatureStandardizer, count_parameters, relative_weight_change

TOTAL, ENCODER, DECODER_AND_HEAD = 7_846_657, 4_712_224, 3_134_433


def n_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def double_conv_params(cin: int, cout: int) -> int:
    return (cin * cout * 9 + cout) + (cout * cout * 9 + cout)


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return unet_paper()


# --- architecture ---------------------------------------------------------------------------


def test_paper_unet_has_the_papers_parameter_counts(paper_model):
    assert n_params(paper_model) == TOTAL
    assert n_params(paper_model.encoder) == ENCODER
    assert n_params(paper_model.decoder) + n_params(paper_model.segmentation_head) == DECODER_AND_HEAD


def test_parameter_counts_reports_the_same_figures(paper_model):
    counts = parameter_counts(paper_model)
    assert counts["total_params"] == TOTAL
    assert counts["encoder_params"] == ENCODER
    assert counts["decoder_params"] == DECODER_AND_HEAD


def test_encoder_levels_are_the_classic_double_convs(paper_model):
    widths = (3, 32, 64, 128, 256, 512)
    per_level = [n_params(level) for level in paper_model.encoder.levels]
    assert per_level == [double_conv_params(widths[i], widths[i + 1]) for i in range(5)]


@pytest.mark.parametrize("height,width", [(32, 32), (64, 64), (48, 80), (80, 48)])
def test_output_is_one_logit_map_of_the_input_size(paper_model, height, width):
    with torch.no_grad():
        out = paper_model(torch.rand(2, 3, height, width))
    assert out.shape == (2, 1, height, width)
    assert torch.isfinite(out).all()


def test_architecture_description_names_the_channels(paper_model):
    assert paper_model.architecture == {"name": "unet_paper", "in_channels": 3, "channels": [32, 64, 128, 256, 512]}


# --- freeze policies --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["scratch", "none"])
def test_scratch_and_none_train_everything(mode):
    model = unet_paper()
    FreezePolicy("encoder").apply(model)  # start frozen: the policy must undo it
    FreezePolicy(mode).apply(model)
    assert n_params(model, trainable_only=True) == TOTAL
    model.train()
    assert model.encoder.training
    assert model.encoder.frozen_levels == 0


def test_freeze_encoder_leaves_exactly_the_papers_trainable_count():
    model = unet_paper()
    FreezePolicy("encoder").apply(model)
    assert n_params(model, trainable_only=True) == DECODER_AND_HEAD
    assert count_parameters(model, trainable_only=True) == DECODER_AND_HEAD
    assert n_params(model.encoder, trainable_only=True) == 0


def test_frozen_encoder_stays_in_eval_mode_after_train():
    model = unet_paper()
    FreezePolicy("encoder").apply(model)
    model.train()
    assert not model.encoder.training
    assert all(not m.training for m in model.encoder.modules())
    assert model.decoder.training and model.segmentation_head.training


def test_partial_depth_two_freezes_exactly_levels_zero_and_one():
    model = unet_paper()
    FreezePolicy("partial", depth=2).apply(model)
    levels = model.encoder.levels
    frozen = double_conv_params(3, 32) + double_conv_params(32, 64)
    assert all(not p.requires_grad for lv in levels[:2] for p in lv.parameters())
    assert all(p.requires_grad for lv in levels[2:] for p in lv.parameters())
    assert n_params(model, trainable_only=True) == TOTAL - frozen
    model.train()
    assert [lv.training for lv in levels] == [False, False, True, True, True]


def test_partial_frozen_levels_build_no_graph_but_later_levels_do():
    model = unet_paper()
    FreezePolicy("partial", depth=2).apply(model)
    features = model.encoder(torch.rand(1, 3, 32, 32))
    assert [f.requires_grad for f in features] == [False, False, True, True, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "bogus"},
        {"mode": "Encoder"},
        {"mode": "partial"},
        {"mode": "partial", "depth": 0},
        {"mode": "partial", "depth": -1},
    ],
)
def test_invalid_policy_raises_value_error_naming_freeze(kwargs):
    with pytest.raises(ValueError, match=r"transfer\.freeze"):
        FreezePolicy(**kwargs)


def test_partial_depth_beyond_encoder_levels_raises_naming_freeze_depth():
    with pytest.raises(ValueError, match=r"transfer\.freeze_depth"):
        FreezePolicy("partial", depth=6).apply(unet_paper())


def test_loads_encoder_only_when_not_scratch():
    assert not FreezePolicy("scratch").loads_encoder
    assert FreezePolicy("encoder").loads_encoder and FreezePolicy("none").loads_encoder


def test_adam_step_with_frozen_encoder_changes_decoder_only():
    torch.manual_seed(0)
    model = unet_paper()
    FreezePolicy("encoder").apply(model)
    model.train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, masks = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, encoder_before[name]), name
    assert any(not torch.equal(t, decoder_before[k]) for k, t in model.decoder.state_dict().items())


def test_frozen_encoder_builds_no_autograd_graph():
    model = unet_paper()
    FreezePolicy("encoder").apply(model)
    assert torch.is_grad_enabled()
    features = model.encoder(torch.rand(1, 3, 32, 32))
    assert features[-1].requires_grad is False
    assert features[-1].grad_fn is None


def test_unfrozen_encoder_does_build_a_graph():
    model = unet_paper()
    FreezePolicy("none").apply(model)
    features = model.encoder(torch.rand(1, 3, 32, 32))
    assert features[-1].requires_grad is True


# --- stage 1 classifier -----------------------------------------------------------------------


def test_classifier_shares_the_very_same_encoder_module():
    seg = unet_paper(channels=(8, 16, 32, 64, 128))
    clf = EncoderClassifier(seg, num_classes=2, hidden=(16,))
    assert clf.encoder is seg.encoder
    assert clf.normalize is seg.normalize
    with torch.no_grad():
        next(clf.encoder.parameters()).add_(1.0)
    assert torch.equal(next(clf.encoder.parameters()), next(seg.encoder.parameters()))
    assert clf.architecture == seg.architecture


@pytest.mark.parametrize("num_classes,logits", [(2, 1), (3, 3), (5, 5)])
def test_classifier_logit_shape(num_classes, logits):
    clf = EncoderClassifier(unet_paper(channels=(8, 16, 32, 64, 128)), num_classes=num_classes, hidden=(16,))
    clf.eval()
    with torch.no_grad():
        out = clf(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, logits)


def test_relative_weight_change_measures_how_far_training_moved_a_module():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    assert relative_weight_change(initial, module) == 0.0
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(1.1)
    assert relative_weight_change(initial, module) == pytest.approx(0.1, rel=1e-4)


def test_level_weight_changes_name_the_level_that_moved():
    from defectseg.models.freeze import encoder_levels, level_weight_changes

    encoder = unet_paper(channels=(8, 16, 32, 64, 128)).encoder
    initial = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        for parameter in encoder_levels(encoder)[-1][0].parameters():  # only the deepest level
            parameter.mul_(1.2)
    changes = level_weight_changes(encoder, initial)
    assert changes[:-1] == [0.0] * 4
    assert changes[-1] == pytest.approx(0.2, rel=0.05)


def test_feature_calibration_reports_channels_that_never_fire():
    standardizer = FeatureStandardizer([4, 2])
    level0 = torch.rand(3, 4, 5, 5)
    level0[:, 1:3] = 0.0  # two ReLU channels silent on every image
    level1 = torch.rand(3, 2, 2, 2)
    silent = standardizer.calibrate([[level0, level1]])
    assert silent == [0.5, 0.0]
    assert torch.equal(standardizer.inv_std_0[0, 1:3].flatten(), torch.ones(2))  # silent channels keep scale 1
