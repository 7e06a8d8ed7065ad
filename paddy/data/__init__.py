"""Data: sources (on-disk layouts), validation, splits, transforms and the LightningDataModule."""

from paddy.data.datamodule import ImageDataModule, ImageDataset
from paddy.data.errors import DataProblem, DataSourceError, DataValidationError
from paddy.data.sources import (
    FashionMNISTSource,
    ImageFolderSource,
    ImageSource,
    MetadataCSVSource,
    PaddyDoctorSource,
    Sample,
    SourceIndex,
    SyntheticSource,
)

__all__ = [
    "DataProblem", "DataSourceError", "DataValidationError", "FashionMNISTSource", "ImageDataModule",
    "ImageDataset", "ImageFolderSource", "ImageSource", "MetadataCSVSource", "PaddyDoctorSource",
    "Sample", "SourceIndex", "SyntheticSource",
]
