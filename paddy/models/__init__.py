"""Models: timm backbones, attention blocks, heads, the recipes that compose them, and the zoo."""

from paddy.models.backbone import PretrainedWeightsError, create_backbone
from paddy.models.classifier import ImageClassifier
from paddy.models.factory import build_model
from paddy.models.fusion import DCTFusionClassifier
from paddy.models.heads import ClassifierHead
from paddy.models.zoo import create_model, list_models

__all__ = ["ClassifierHead", "DCTFusionClassifier", "ImageClassifier", "PretrainedWeightsError", "build_model",
           "create_backbone", "create_model", "list_models"]
