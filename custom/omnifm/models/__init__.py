"""Task models and the OmniFM wrapper."""

from omnifm.models.factory import DEFAULT_SEG_MODEL, build_seg_model
from omnifm.models.omnifm import OmniFM, OmniFMConfig, OmniFMOutput

__all__ = ["DEFAULT_SEG_MODEL", "OmniFM", "OmniFMConfig", "OmniFMOutput", "build_seg_model"]
