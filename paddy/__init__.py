"""paddy: config-driven experiments for image classification with attention-augmented CNNs."""

import os

# albumentations asks a web server for its newest version at import time; paddy runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
