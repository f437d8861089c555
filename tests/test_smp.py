"""smp models in both stages: ready configs, freeze policies by level, encoder exchange, starting weights."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from defectseg.finetune import load_pretrained, run_finetune
from defectseg.models import EncoderClassifier, FreezePolicy, parameter_counts, smp_model, smp_models, unet_paper
from defectseg.models.encoder_io import EncoderMismatchError, load_encoder, save_encoder
from defectseg.models.freeze import encoder_levels
from defectseg.pretrain import run_pretrain
from defectseg.utils.errors import UserError, exit_cleanly_on_user_error, user_error_in
from defectseg.utils.naming import job_name
from tests.helpers import TINY_TRAINER

# The ready configs' documented sizes (docs/models.md, conf/model/*.yaml): total, encoder, decoder + head.
READY = {
    "smp_unet_resnet34": ("unet-resnet34", 24_436_369, 21_284_672, 3_151_697),
    "smp_fpn_efficientnet": ("fpn-efficientnet-b0", 5_759_485, 4_007_548, 1_751_937),
    "smp_deeplabv3plus_resnet50": ("deeplabv3plus-resnet50", 26_677_585, 23_508_032, 3_169_553),
    "smp_unetplusplus_convnext": ("unetplusplus-tu-convnext_tiny", 34_335_665, 27_818_592, 6_517_073),
}
# The same architecture on a small encoder of the same family, to keep forward/backward fast on a CPU.
SMALL_ENCODER = {
    "smp_unet_resnet34": "resnet18",
    "smp_fpn_efficientnet": "efficientnet-b0",
    "smp_deeplabv3plus_resnet50": "resnet18",
    "smp_unetplusplus_convnext": "tu-convnext_atto",
}
RESNET18_LEVELS = [9_536, 147_968, 525_568, 2_099_712, 8_393_728]  # stem; maxpool+layer1; layer2; layer3; layer4


def small_unet(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return smp_model("unet", "resnet18", **kwargs)


def batch(size: int = 32):
    torch.manual_seed(1)
    return torch.rand(2, 3, size, size), (torch.rand(2, 1, size, size) > 0.7).float()


def encoder_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.encoder.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].cpu(), b[name].cpu()), name


def train_steps(model, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images, masks = batch()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks).backward()
        optimizer.step()


# --- ready configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(READY))
def test_ready_config_composes_builds_with_documented_counts(compose_config, config):
    model = instantiate(compose_config("finetune", [f"model={config}"]).model)
    name, total, encoder, decoder = READY[config]
    assert model.name == name and model.architecture["name"] == "smp" and model.encoder_init is None
    assert parameter_counts(model) == {
        "total_params": total,
        "trainable_params": total,
        "encoder_params": encoder,
        "decoder_params": decoder,
    }
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


@pytest.mark.parametrize("config", sorted(READY))
def test_ready_config_architecture_trains_on_a_tiny_batch(compose_config, config):
    """Forward/backward through the same code path as stage 2: calibrated feature scale, frozen encoder."""
    cfg = compose_config("finetune", [f"model={config}", f"model.encoder_name={SMALL_ENCODER[config]}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    FreezePolicy("encoder").apply(model)
    images, masks = batch()
    model.calibrate_feature_scale([images])
    model.train()
    logits = model(images)
    assert logits.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, masks).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.segmentation_head.parameters())


def test_image_sides_not_a_multiple_of_the_stride_are_refused_clearly():
    model = smp_model("fpn", "resnet18")
    with pytest.raises(
        ValueError, match=r"fpn-resnet18 needs image sides that are multiples of 32, got 48x64.*dataset.image_size"
    ):
        model(torch.rand(1, 3, 48, 64))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"arch": "unetzzz"}, "model.arch"),
        ({"encoder_name": "resnet9000"}, "model.encoder_name"),
        ({"in_channels": 1}, "model.mean"),
    ],
)
def test_bad_model_keys_are_named(kwargs, key):
    with pytest.raises(ValueError, match=key):
        smp_model(**kwargs)


# --- stage 1 classifier and freeze levels -----------------------------------------------------------


def test_classifier_uses_the_smp_encoder_and_its_deepest_map():
    model = small_unet()
    classifier = EncoderClassifier(model, num_classes=2, hidden=(16,))
    assert classifier.encoder is model.encoder and classifier.normalize is model.normalize
    assert classifier.head.layers[1].in_features == 2 * 512  # avg + max pooling of resnet18's 512 channels
    classifier.eval()
    with torch.no_grad():
        assert classifier(torch.rand(3, 3, 64, 64)).shape == (3, 1)


def test_smp_levels_are_the_encoder_stages():
    model = small_unet()
    levels = encoder_levels(model.encoder)
    assert [
        sum(p.numel() for module in level for p in module.parameters(recurse=False)) for level in levels
    ] == RESNET18_LEVELS
    assert model.encoder.conv1 in levels[0] and model.encoder.bn1 in levels[0]
    assert all(
        module in levels[4] for module in model.encoder.layer4.modules() if list(module.parameters(recurse=False))
    )


def test_levels_probe_changes_neither_statistics_nor_modes():
    model = small_unet()
    model.train()
    before = encoder_state(model)
    encoder_levels(model.encoder)
    assert_same_tensors(before, encoder_state(model))
    assert all(module.training for module in model.encoder.modules())
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_frozen_smp_encoder_and_its_batchnorm_statistics_stay_unchanged_while_decoder_trains():
    model = small_unet()
    FreezePolicy("encoder").apply(model)
    assert parameter_counts(model)["trainable_params"] == parameter_counts(model)["decoder_params"]
    encoder_before = encoder_state(model)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    train_steps(model)
    assert not model.encoder.training and not model.encoder.bn1.training
    assert_same_tensors(
        encoder_before, encoder_state(model)
    )  # running_mean / running_var / num_batches_tracked included
    assert any(not torch.equal(decoder_before[k], v) for k, v in model.decoder.state_dict().items())


def test_partial_freezes_the_first_stages_only():
    model = small_unet()
    assert FreezePolicy("partial", depth=2).apply(model) == 2
    encoder = model.encoder
    assert parameter_counts(model)["trainable_params"] == parameter_counts(model)["total_params"] - sum(
        RESNET18_LEVELS[:2]
    )
    stats_before = {k: v.clone() for k, v in encoder.layer1.state_dict().items()}
    layer2_before = encoder.layer2[0].bn1.running_mean.clone()
    train_steps(model, steps=2)
    assert not encoder.bn1.training and not encoder.layer1[0].bn1.training and encoder.layer2[0].bn1.training
    assert_same_tensors(stats_before, encoder.layer1.state_dict())
    assert not torch.equal(layer2_before, encoder.layer2[0].bn1.running_mean)
    with pytest.raises(ValueError, match=r"transfer\.freeze_depth"):
        FreezePolicy("partial", depth=6).apply(model)


def test_convnext_has_an_empty_first_level_and_still_calibrates():
    model = smp_model("unet", "tu-convnext_atto")
    levels = encoder_levels(model.encoder)
    assert len(levels) == 5 and levels[0] == [] and all(levels[1:])
    model.calibrate_feature_scale([torch.rand(2, 3, 64, 64)])
    assert model.feature_scale.inv_std_1.shape == (1, 0, 1, 1) and not torch.equal(
        model.feature_scale.inv_std_2, torch.ones_like(model.feature_scale.inv_std_2)
    )


# --- encoder exchange ----------------------------------------------------------------------------


def test_encoder_of_another_smp_encoder_is_refused_naming_both(tmp_path: Path):
    other = small_unet()
    save_encoder(other.encoder, tmp_path, other.architecture)
    target = smp_model("unet", "resnet34")
    before = encoder_state(target)
    with pytest.raises(EncoderMismatchError, match=r"encoder_name: resnet18 in the file, resnet34 here"):
        load_encoder(target.encoder, tmp_path, target.architecture)
    assert_same_tensors(before, encoder_state(target))


@pytest.mark.parametrize("direction", ["unet_paper into smp", "smp into unet_paper"])
def test_encoder_of_another_model_family_is_refused(tmp_path: Path, direction):
    paper, resnet = unet_paper(channels=(4, 8, 16, 32, 64)), small_unet()
    source, target = (paper, resnet) if direction == "unet_paper into smp" else (resnet, paper)
    save_encoder(source.encoder, tmp_path, source.architecture)
    with pytest.raises(EncoderMismatchError, match=r"name: (unet_paper|smp) in the file, (smp|unet_paper) here"):
        load_encoder(target.encoder, tmp_path, target.architecture)


def test_encoder_transfers_between_decoders_of_the_same_encoder(tmp_path: Path):
    """Stage 1 trains the encoder only: a U-Net stage 1 serves an FPN stage 2 of the same encoder."""
    unet = small_unet(seed=1)
    save_encoder(unet.encoder, tmp_path, unet.architecture)
    fpn = smp_model("fpn", "resnet18")
    load_encoder(fpn.encoder, tmp_path, fpn.architecture)
    assert_same_tensors(encoder_state(unet), encoder_state(fpn))


def test_stage1_to_stage2_transfers_the_smp_encoder_and_keeps_it_frozen(
    compose_config, classification_set, segmentation_set, monkeypatch
):
    small = ["model=smp", "model.encoder_name=resnet18", "dataset.image_size=32", "dataset.batch_size=2"]
    stage1 = run_pretrain(
        compose_config(
            "pretrain",
            TINY_TRAINER + small + ["dataset=folder_cls", f"dataset.root={classification_set}"],
            run_name="s1",
        )
    )
    encoder_file = Path(stage1["encoder_weights"])
    info = json.loads(encoder_file.with_name("encoder.json").read_text())
    assert info["architecture"] == {"name": "smp", "encoder_name": "resnet18", "in_channels": 3, "encoder_depth": 5}
    assert info["pretrain"]["model"] == "unet-resnet18" and stage1["encoder_params"] == sum(RESNET18_LEVELS)
    assert stage1["total_params"] == stage1["encoder_params"] + stage1["head_params"]

    captured = {}
    original_apply = FreezePolicy.apply

    def spy_apply(self, model):
        captured["model"], captured["loaded"] = model, encoder_state(model)
        return original_apply(self, model)

    monkeypatch.setattr(FreezePolicy, "apply", spy_apply)
    metrics = run_finetune(
        compose_config(
            "finetune",
            TINY_TRAINER + small + ["freeze=encoder", "dataset=folder_seg", f"dataset.root={segmentation_set}"],
            run_name="s2",
        )
    )
    stage1_weights = load_file(str(encoder_file))
    assert_same_tensors(stage1_weights, captured["loaded"])  # loaded identically
    assert_same_tensors(
        stage1_weights, encoder_state(captured["model"])
    )  # and unchanged by training, BN statistics included
    assert metrics["model"] == "unet-resnet18" and metrics["pretrain_task"] == "classification"
    assert metrics["trainable_params"] == metrics["decoder_params"] == 3_151_697
    assert (
        metrics["encoder_params"] == sum(RESNET18_LEVELS)
        and metrics["total_params"] == metrics["encoder_params"] + metrics["decoder_params"]
    )


# --- starting weights: ImageNet and local files ------------------------------------------------------


def saved_resnet18_state(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return smp.encoders.get_encoder("resnet18", weights=None).state_dict()


@pytest.mark.parametrize("layout", ["torch.save", "safetensors", "whole smp model", "with a classifier"])
def test_local_weights_file_is_loaded_exactly(tmp_path: Path, layout):
    state = saved_resnet18_state()
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pth")
    if layout == "safetensors":
        save_file(state, str(path))
    elif layout == "whole smp model":
        torch.save({f"encoder.{k}": v for k, v in state.items()} | {"decoder.x.weight": torch.zeros(2)}, path)
    elif layout == "with a classifier":
        torch.save(state | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    else:
        torch.save(state, path)
    model = small_unet(seed=0, encoder_weights=str(path))
    assert_same_tensors(state, encoder_state(model))
    assert model.encoder_init == str(path.resolve())


def test_local_weights_of_another_encoder_are_refused_clearly(tmp_path: Path):
    path = tmp_path / "b0.pth"
    torch.save(smp.encoders.get_encoder("efficientnet-b0", weights=None).state_dict(), path)
    with pytest.raises(EncoderMismatchError, match=rf"{path}: tensors do not match the encoder \(\d+ missing"):
        small_unet(encoder_weights=str(path))
    torch.save(
        smp.encoders.get_encoder("resnet34", weights=None).state_dict(), path
    )  # resnet18's tensors and more blocks
    with pytest.raises(EncoderMismatchError, match=r"blocks this encoder lacks \(e.g. \['layer1.2"):
        small_unet(encoder_weights=str(path))
    with pytest.raises(FileNotFoundError, match=r"model\.encoder_weights: no weights file"):
        small_unet(encoder_weights=str(tmp_path / "nowhere.safetensors"))


def test_imagenet_without_network_fails_at_once_saying_how_to_pass_a_file(monkeypatch):
    monkeypatch.setattr(smp_models, "hub_unreachable_reason", lambda: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr(smp.encoders, "hf_hub_download", lambda *a, **k: pytest.fail("no download may be tried"))
    with pytest.raises(
        UserError, match=r"model.encoder_weights=imagenet .*cannot be reached.*model.encoder_weights=/path/to/file"
    ):
        small_unet(encoder_weights="imagenet")


def test_hub_client_errors_become_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the requested files in "
            "the local cache."
        )

    monkeypatch.setattr(smp_models, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(
        UserError, match=r"could not get the resnet18 weights \(An error happened.*model.encoder_weights=/path/to/file"
    ):
        small_unet(encoder_weights="imagenet")


def test_downloaded_weights_are_loaded_into_the_encoder(monkeypatch, tmp_path: Path):
    """smp's download path, with the hub client replaced by a local file."""
    state = saved_resnet18_state(seed=5)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(smp_models, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(
        smp.encoders, "hf_hub_download", lambda repo_id, filename, revision=None: str(tmp_path / filename)
    )
    model = small_unet(encoder_weights="imagenet")
    assert_same_tensors(state, encoder_state(model))
    assert model.encoder_init == "imagenet"


def test_entry_point_prints_the_offline_error_in_one_line(monkeypatch, capsys):
    """Hydra's instantiate wraps the model's UserError; the entry point still prints one line and exits 2."""
    monkeypatch.setattr(smp_models, "hub_unreachable_reason", lambda: "no route")

    @exit_cleanly_on_user_error
    def main():
        instantiate(
            {"_target_": "defectseg.models.smp_model", "encoder_name": "resnet18", "encoder_weights": "imagenet"}
        )

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: model.encoder_weights=imagenet")
        and "Traceback" not in err
        and len(err.splitlines()) == 1
    )


def test_stage1_refuses_unreachable_imagenet_before_generating_data(compose_config, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(smp_models, "hub_unreachable_reason", lambda: "no route")
    with pytest.raises(Exception) as caught:
        run_pretrain(compose_config("pretrain", ["model=smp_unet_resnet34", "model.encoder_weights=imagenet"]))
    assert isinstance(user_error_in(caught.value), UserError)
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()


def test_reachability_probe_fails_fast_on_a_closed_port_and_passes_on_an_open_one(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert smp_models.hub_unreachable_reason() is None
    started = time.monotonic()
    reason = smp_models.hub_unreachable_reason(timeout=1.0)  # the port was closed with the socket
    assert reason and "127.0.0.1" in reason and time.monotonic() - started < 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert smp_models.hub_unreachable_reason() is None  # offline mode: the hub client answers from its cache


def test_stage2_uses_starting_weights_instead_of_a_stage1_encoder(tmp_path: Path):
    path = tmp_path / "resnet18_imagenet.safetensors"
    save_file(saved_resnet18_state(), str(path))
    model = small_unet(encoder_weights=str(path))
    before = encoder_state(model)
    pretrained = load_pretrained(model, FreezePolicy("encoder"), str(tmp_path / "no_stage1_here"))
    assert pretrained == {"path": str(path.resolve()), "pretrain_task": "resnet18_imagenet.safetensors"}
    assert_same_tensors(before, encoder_state(model))
    with pytest.raises(UserError, match=r"transfer=scratch trains from random weights.*model.encoder_weights=null"):
        load_pretrained(model, FreezePolicy("scratch"), None)


# --- sweeps over models ----------------------------------------------------------------------------


def test_job_names_carry_the_model_axes():
    assert (
        job_name(["model=smp_unet_resnet34", "freeze=scratch", "seed=1"])
        == "freeze-scratch+model-smp_unet_resnet34+seed-1"
    )
    name = job_name(
        [
            "model=smp",
            "model.arch=fpn",
            "model.encoder_name=efficientnet-b0",
            "model.encoder_weights=/w/r34.safetensors",
        ]
    )
    assert name == "arch-fpn+encoder-efficientnet-b0+model-smp+weights-w-r34.safetensors"


def test_report_compares_modes_within_each_model(tmp_path: Path):
    from defectseg.report import aggregate, collect_runs, markdown_table
    from tests.helpers import finetune_metrics, write_job, write_multirun

    sweep = tmp_path / "sweep"
    write_multirun(sweep, ["model=unet_paper,smp_unet_resnet34", "freeze=scratch,encoder", "seed=0,1"])
    dice = {
        ("unet_paper", "scratch"): 0.70,
        ("unet_paper", "encoder"): 0.60,
        ("unet-resnet34", "scratch"): 0.75,
        ("unet-resnet34", "encoder"): 0.85,
    }
    job = 0
    for option, model in (("unet_paper", "unet_paper"), ("smp_unet_resnet34", "unet-resnet34")):
        for freeze in ("scratch", "encoder"):
            for seed in (0, 1):
                run = finetune_metrics(freeze, seed, dice[model, freeze] + 0.01 * seed) | {"model": model}
                write_job(sweep, str(job), [f"model={option}", f"freeze={freeze}", f"seed={seed}"], run)
                job += 1
    runs, missing = collect_runs(sweep)
    assert not missing and len(runs) == 8
    rows = {(row["model"], row["freeze"]): row for row in aggregate(runs, n_resamples=200)}
    assert len(rows) == 4
    assert rows["unet-resnet34", "encoder"]["gain_abs"] == pytest.approx(0.10)
    assert rows["unet_paper", "encoder"]["gain_abs"] == pytest.approx(-0.10)
    table = markdown_table(list(rows.values()))
    assert "| model |" in table and "unet-resnet34" in table and "unet_paper" in table
