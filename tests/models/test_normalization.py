"""Each backbone family gets the input normalisation it was trained with, and artifacts keep it."""

import pytest
import torch

from models.config import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, ModelConfig


@pytest.mark.parametrize("name, mean, std", [
    ("efficientnet_lite0", (0.5,) * 3, (0.5,) * 3),  # TF EfficientNet-Lite: inputs in [-1, 1]
    ("efficientnet_lite2", (0.5,) * 3, (0.5,) * 3),
    ("resnet18", IMAGENET_MEAN, IMAGENET_STD),  # torchvision ImageNet models
    ("wide_resnet50_2", IMAGENET_MEAN, IMAGENET_STD),
    ("timm:resnet50", IMAGENET_MEAN, IMAGENET_STD),  # timm: the model's own pretrained config
    ("timm:inception_v3", (0.5,) * 3, (0.5,) * 3),
])
def test_each_family_gets_its_own_normalisation(name, mean, std):
    cfg = BackboneConfig(name=name)
    assert cfg.mean == pytest.approx(mean) and cfg.std == pytest.approx(std)


def test_explicit_normalisation_wins_and_unknown_timm_model_is_a_clear_error():
    assert BackboneConfig(name="resnet18", mean=(0.1, 0.2, 0.3)).mean == (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="no pretrained config"):
        BackboneConfig(name="timm:no_such_model_anywhere")


def test_config_round_trip_keeps_resolved_normalisation():
    cfg = ModelConfig(backbone=BackboneConfig(name="resnet18", stages=(2, 3)))
    back = ModelConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.backbone.mean == IMAGENET_MEAN


def test_torchvision_artifact_records_and_restores_imagenet_statistics(tmp_path):
    """A resnet18 detector from a local weights file: saved and reloaded, it still normalises with ImageNet
    statistics (not EfficientNet-Lite's 0.5), and its features use them."""
    import torchvision

    from models.detector import Detector, shared_backbone
    from models.features import to_batch
    from models.sae import TopKSAE

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = ModelConfig(backbone=BackboneConfig(name="resnet18", stages=(2, 3)))
    backbone = shared_backbone("resnet18", (2, 3), str(weights), "cpu")
    det = Detector(config, backbone, torch.zeros(384), torch.ones(384), TopKSAE(384, 768, 4))
    det.save(tmp_path / "r18.safetensors")
    loaded = Detector.from_artifact(tmp_path / "r18.safetensors", "cpu", backbone_weights=str(weights))
    assert loaded.config.backbone.mean == IMAGENET_MEAN and loaded.config.backbone.std == IMAGENET_STD
    grey = torch.full((1, 8, 8, 3), 0.5).numpy()
    x = to_batch(grey, loaded.config.backbone.mean, loaded.config.backbone.std)
    assert x[0, 0, 0, 0].item() == pytest.approx((0.5 - 0.485) / 0.229)
