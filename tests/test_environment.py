"""What `bash run.sh setup` must leave working on a CPU-only machine, offline."""
import numpy as np


def test_smp_timm_torchvision_import_and_run_on_cpu():
    import segmentation_models_pytorch as smp
    import timm
    import torch
    import torchvision

    model = smp.DeepLabV3(encoder_name="resnet18", encoder_weights=None, classes=4).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 64, 128))
    assert logits.shape == (2, 4, 64, 128)
    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5).tolist() == [0]
    encoder = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_albumentations_transforms_masks():
    import albumentations as A

    image = np.zeros((256, 1600, 3), np.uint8)
    mask = np.zeros((256, 1600, 4), np.uint8)
    mask[10:20, 30:40, 2] = 1
    out = A.Compose([A.HorizontalFlip(p=1.0)])(image=image, mask=mask)
    assert out["mask"][10:20, 1560:1570, 2].all() and out["mask"].sum() == 100
