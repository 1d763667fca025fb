import numpy as np
import pytest
import torch

from models.backbone import Backbone, BackboneError, build_lite_classifier, lite_weights_path


def _cat_batch() -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    img = cv2.resize(skimage_data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return ((torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5).contiguous()


def test_port_matches_reference_implementation_on_a_real_photo():
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite_weights_path(
        "efficientnet_lite0"))).eval()
    ours = build_lite_classifier("efficientnet_lite0")
    x = _cat_batch()
    with torch.no_grad():
        a, b = ours(x), ref(x)
    diff = (a - b).abs().max().item()
    print(f"max |logit difference| = {diff:.2e}; top-1 = {int(a.argmax())}")
    assert diff < 1e-3
    assert 281 <= int(a.argmax()) <= 285  # ImageNet cat classes


def test_backbone_is_frozen_and_multiscale():
    bb = Backbone("efficientnet_lite0", (2, 3))
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    maps = bb(torch.zeros(1, 3, 128, 192))
    assert [tuple(m.shape) for m in maps] == [(1, 40, 16, 24), (1, 112, 8, 12)]
    assert len(bb.weights_sha256) == 64


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="resnet18.*does not exist"):
        Backbone("resnet18", (2, 3), weights=tmp_path / "missing.pth")
    with pytest.raises(BackboneError, match="unknown backbone"):
        Backbone("vgg_imaginary", (2, 3))


def test_torchvision_backbone_from_local_file(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    maps = Backbone("resnet18", (2, 3), weights=path)(torch.zeros(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [128, 256] and maps[0].shape[-1] == 8
