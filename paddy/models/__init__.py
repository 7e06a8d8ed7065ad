"""Models: timm backbones, attention blocks, heads, and the classifier that composes them."""

from paddy.models.backbone import PretrainedWeightsError, create_backbone
from paddy.models.classifier import ImageClassifier, build_classifier
from paddy.models.heads import ClassifierHead

__all__ = ["ClassifierHead", "ImageClassifier", "PretrainedWeightsError", "build_classifier", "create_backbone"]
