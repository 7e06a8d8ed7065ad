"""Benchmarks from the command line: ``python -m paddy.benchmark [mode=models|scaling|throughput|loader] ...``.

- ``mode=models`` (:func:`paddy.benchmark.models.run_models`): a comparison table of models
  (parameters, GFLOPs, size, inference/training images/s, activation and peak memory) per device;
- ``mode=scaling`` (:func:`paddy.benchmark.models.run_scaling`): BoT vs BoT-linear memory and speed
  at 224-512 px, with the ratios next to the old notes' claims;
- ``mode=throughput`` (``paddy.benchmark.throughput``);
- ``mode=loader`` (``paddy.benchmark.loader``): the data loaders alone, timm's next to paddy's.

Shared pieces (command-line parsing, environment, timing, memory counters, the Markdown/CSV/JSON
writers) live in :mod:`paddy.benchmark.common`. Importing this package imports no torch.
"""
