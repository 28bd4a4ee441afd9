"""The OmniFM wrapper around a task network, and the tap that connects the two."""

from omnifm.models.omnifm import OmniFM, OmniFMConfig, OmniFMOutput
from omnifm.models.tap import BottleneckTap, NetworkAdapter

__all__ = ["BottleneckTap", "NetworkAdapter", "OmniFM", "OmniFMConfig", "OmniFMOutput"]
