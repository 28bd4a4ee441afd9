"""Multi-modal image fusion on the task seam: paired sources, a DenseNet-style U2Fusion-like network, MI / SSIM / L1."""

from omnifm.tasks.image_fusion.task import FUSION_INPUTS, FusionTask

__all__ = ["FUSION_INPUTS", "FusionTask"]
