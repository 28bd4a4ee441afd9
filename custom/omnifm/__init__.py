"""OmniFM: modality- and task-agnostic federated learning for heterogeneous medical imaging.

The core sub-packages (``modules``, ``knowledge``, ``losses``, ``models``, ``data``, ``engine``,
``algorithms``) are pure PyTorch/MONAI and never import nvflare; only :mod:`omnifm.fl` does.
"""

__version__ = "0.1.0"
