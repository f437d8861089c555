"""Models: the paper's U-Net and smp's architectures as encoder + decoder + head, plus stage 1's classifier."""

from defectseg.models.classifier import ClassificationHead, EncoderClassifier
from defectseg.models.freeze import FreezePolicy
from defectseg.models.segmentation import SegmentationModel, parameter_counts, unet_paper
from defectseg.models.smp_models import smp_model

__all__ = [
    "ClassificationHead",
    "EncoderClassifier",
    "FreezePolicy",
    "SegmentationModel",
    "parameter_counts",
    "smp_model",
    "unet_paper",
]
