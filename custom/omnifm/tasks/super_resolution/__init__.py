"""Super-resolution on the task seam: k-space-truncated axial slices, a small EDSR-style network, PSNR / SSIM."""

from omnifm.tasks.super_resolution.degrade import kspace_lowpass, lowres_grid
from omnifm.tasks.super_resolution.task import SRTask

__all__ = ["SRTask", "kspace_lowpass", "lowres_grid"]
