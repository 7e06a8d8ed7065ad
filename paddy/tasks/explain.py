"""``explain.on_test=true``: a Grad-CAM grid of test images in TensorBoard at the end of testing.

The maps are :func:`paddy.explain.class_activation_maps` of the tested network (with the EMA weights
when the run tests with them: the grid is drawn before the test's EMA swap-back), on the default
target layer of :func:`paddy.explain.target_layer`, for ``n_images`` test images picked round-robin
over the classes. The ``grad-cam`` package is imported only when the grid is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from lightning import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


class GradCAMGrid(Callback):
    """Writes ``test/<method>`` (IMAGES) to the run's TensorBoard logger after the test epoch.

    Args:
        on_test: draw the grid (the recipe turns the callback on with it; kept so the config node is
            the callback's arguments).
        n_images: test images in the grid.
        method: a CAM method of :data:`paddy.explain.CAM_METHODS`.
        target_layer: a module path; None: :func:`paddy.explain.target_layer`'s default.
    """

    def __init__(self, on_test: bool = True, n_images: int = 8, method: str = "gradcam",
                 target_layer: str | None = None):
        from paddy.explain import CAM_METHODS, ExplainError

        if method not in CAM_METHODS:
            raise ExplainError(f"explain.method={method!r}: unknown CAM method (one of: {', '.join(CAM_METHODS)})")
        if int(n_images) < 1:
            raise ExplainError(f"explain.n_images={n_images} (expected >= 1)")
        self.on_test, self.n_images, self.method, self.target_layer = bool(on_test), int(n_images), method, target_layer

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from paddy.tasks.dashboards import tensorboard_logger

        if not self.on_test or not trainer.is_global_zero:
            return
        logger = tensorboard_logger(trainer)
        if logger is None:
            log.info("explain.on_test: no TensorBoard logger in this run, so no Grad-CAM grid")
            return
        try:
            image = self.grid(trainer, pl_module)
        except Exception as err:  # a figure must never fail a finished run's test
            log.warning("explain.on_test: no Grad-CAM grid: %s: %s", type(err).__name__, err)
            return
        logger.experiment.add_image(f"test/{self.method}", image, trainer.global_step, dataformats="HWC")
        logger.experiment.flush()

    def grid(self, trainer: Trainer, pl_module: LightningModule):  # -> np.ndarray (H x W x 3 uint8)
        """The grid of ``n_images`` test images: photo | map over it, titled with the prediction."""
        from paddy.explain import class_activation_maps, explanation_figure, explanation_row, target_layer
        from paddy.tasks.dashboards import _class_names, _normalization, _pick_indices, _to_unit_image, render_figure

        datamodule = trainer.datamodule
        dataset = datamodule.dataset("test")
        picked = _pick_indices(dataset.labels, self.n_images)
        items = [dataset[i] for i in picked]
        inputs = [x if isinstance(x, Mapping) else {"images": x} for x, _ in items]
        images = torch.stack([torch.as_tensor(x["images"]) for x in inputs]).to(pl_module.device)
        extras = {k: torch.stack([torch.as_tensor(x[k]) for x in inputs]).to(pl_module.device)
                  for k in inputs[0] if k != "images"}
        model = pl_module.model
        name, layer = target_layer(model, self.target_layer)
        cams, probs = class_activation_maps(model, images, layer, self.method, extras)
        mean, std = _normalization(datamodule, dataset.transform)
        names = _class_names(pl_module, probs.shape[1])
        rows = []
        for k, (_, label) in enumerate(items):
            predicted = int(probs[k].argmax())
            view = _to_unit_image(images[k], mean, std)
            title = f"{names[predicted]} {float(probs[k, predicted]):.2f}"
            rows.append(explanation_row(view, f"true: {names[label]}", [(view, cams[k], title, predicted != label)]))
        figure = explanation_figure(rows, title=f"{self.method} on {name}, epoch {trainer.current_epoch}")
        return render_figure(figure)
