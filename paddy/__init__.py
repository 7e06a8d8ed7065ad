"""paddy: config-driven experiments for image classification with attention-augmented CNNs."""

import os

# albumentations asks a web server for its newest version at import time; paddy runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    # paddy.create_model / paddy.list_models without importing torch at `import paddy`.
    if name in ("create_model", "list_models"):
        from paddy.models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'paddy' has no attribute {name!r}")
