"""Models: the paper's U-Net (and friends) as encoder + decoder + head, plus stage 1's classifier."""

from defectseg.models.classifier import ClassificationHead, EncoderClassifier
from defectseg.models.freeze import FreezePolicy
from defectseg.models.segmentation import SegmentationModel, parameter_counts, unet_paper

__all__ = ["ClassificationHead", "EncoderClassifier", "FreezePolicy", "SegmentationModel", "parameter_counts", "unet_paper"]
