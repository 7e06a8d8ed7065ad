"""``model.compile=true`` works for every preset: TorchDynamo captures each network as one graph
(no graph breaks, which would cost speed) and the compiled network computes what the eager one does.

Slow (about 20 s per preset on 2 cores): run with ``pytest -m slow tests/test_compile.py``. The
``aot_eager`` backend traces exactly what Inductor would compile (forward and backward graphs)
without generating kernels; the CPU Inductor path itself is covered by the compile test in
``tests/test_recipe.py``.
"""

from __future__ import annotations

import pytest
import torch

from paddy.models.zoo import create_model, preset_names


@pytest.mark.slow
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_compiles_as_one_graph(name: str):
    torch._dynamo.reset()  # each preset compiled afresh (the shared forward code would hit the recompile limit)
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    inputs = {"images": torch.randn(2, 3, 64, 64)}
    if getattr(model, "input_features", ()):
        inputs["dct"] = torch.randn(2, model.dct_dim)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs), model(**inputs), rtol=1e-4, atol=1e-4)
    model.train()
    compiled(**inputs).logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
