"""Models: the paper's U-Net and smp's architectures as encoder + decoder + head, plus stage 1's classifier."""

from defectseg.models.classifier import ClassificationHead, EncoderClassifier
from defectseg.models.freeze import FreezePolicy
from defectseg.models.segmentation import SegmentationModel, parameter_counts, unet_paper

__all__ = [
    "ClassificationHead",
    "EncoderClassifier",
    "FreezePolicy",
    "SegmentationModel",
    "parameter_counts",
    "smp_model",
    "unet_paper",
]


def __getattr__(name: str):
    """``smp_model`` on first use: segmentation_models_pytorch brings timm, torchvision and huggingface_hub (~200 MB
    resident), which a unet_paper run, its predict included, never needs."""
    if name == "smp_model":
        from defectseg.models.smp_models import smp_model

        return smp_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
