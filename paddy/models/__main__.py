"""``python -m paddy.models [--image-size 224] [--num-classes 10]``: the preset table."""

from __future__ import annotations

import argparse
import logging

import paddy  # noqa: F401  (offline environment)
from paddy.models.zoo import format_table, list_models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List paddy's model presets with parameters and GFLOPs.")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = list_models(image_size=args.image_size, num_classes=args.num_classes)
    print(format_table(rows, args.image_size, args.num_classes))


if __name__ == "__main__":
    main()
