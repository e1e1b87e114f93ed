"""Which pixels drive a face model's output: Integrated Gradients and Grad-CAM (Captum), as overlay pictures.

* **Integrated Gradients** (Sundararajan et al., 2017): the output's gradient integrated along the straight path
  from a baseline (a uniform mid-grey face, 0 in the normalized space) to the photo, times the difference; summed
  over colour channels and taken in absolute value, then smoothed a little (a 3-pixel Gaussian) for display.
* **Grad-CAM** (Selvaraju et al., 2017) on the ViT's final token map (:attr:`ViTEncoder.token_map`): token weights
  from the pooled gradients, positive part, upsampled bilinearly from the token grid to the crop; for an ensemble
  (:class:`~medhub.face.finetuning.FaceEnsemble`) the mean of its members' maps.

Maps are ``(H, W)`` float in [0, 1] on the crop's pixels; :func:`overlay` blends one onto the crop as RGB uint8.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from medhub.face.data import to_tensor

SaliencyMethod = Literal["integrated-gradients", "grad-cam"]
SALIENCY_METHODS: tuple[str, ...] = ("integrated-gradients", "grad-cam")


def saliency_map(net: torch.nn.Module, crop: np.ndarray, method: str = "integrated-gradients", *,
                 steps: int = 32) -> np.ndarray:
    """The saliency of ``net``'s scalar output for one ``(H, W, 3)`` uint8 crop, ``(H, W)`` in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    net.eval()
    x = to_tensor(crop).requires_grad_(True)
    if method == "integrated-gradients":
        from captum.attr import IntegratedGradients

        attribution = IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), n_steps=steps,
                                                         internal_batch_size=steps)
        heat = gaussian_filter(attribution[0].abs().sum(0).detach().numpy(), 1.5)
    elif method == "grad-cam":
        from captum.attr import LayerAttribution, LayerGradCam

        # An ensemble has one token map per member: the map of the mean output is the mean of the members' maps.
        heats = []
        for member in getattr(net, "members", [net]):
            cam = LayerGradCam(member, member.encoder.token_map).attribute(x, relu_attributions=True)
            heats.append(LayerAttribution.interpolate(cam, tuple(crop.shape[:2]),
                                                      interpolate_mode="bilinear")[0, 0].detach().numpy())
        heat = np.mean(heats, axis=0)
    else:
        raise ValueError(f"unknown saliency method {method!r}; choose from {', '.join(SALIENCY_METHODS)}")
    heat = np.clip(heat, 0, None)
    top = float(np.percentile(heat, 99.5))
    return np.clip(heat / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(heat, np.float32)


def overlay(crop: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """``heat`` (in [0, 1]) in matplotlib's ``inferno`` colours blended onto ``crop`` (more where it is hotter)."""
    from matplotlib import colormaps

    colours = colormaps["inferno"](heat)[..., :3] * 255.0
    weight = alpha * heat[..., None]
    return np.clip(crop * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)
