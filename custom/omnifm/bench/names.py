"""The benchmark's names, torch-free, so that ``omnifm-bench --help`` answers without importing the stack.

:data:`SETTINGS` and :data:`GROUPS` are defined here once (``settings`` and ``presets`` import them);
:data:`PRESET_NAMES` must equal the keys of :data:`omnifm.bench.presets.PRESETS`, which that module
checks when it is imported.
"""

from __future__ import annotations

SETTINGS = ("cross-modality", "cross-modality+t1", "same-modality", "dirichlet", "same-modality-t2", "fusion-pairs",
            "modality-clients", "sequence-subsets", "sequence-subsets-flair")
GROUPS = ("main", "ablation", "sensitivity")
PRESET_NAMES = ("cls-quick", "cls-skew", "fedunetmm-quick", "full", "fusion-quick", "quick", "vqa-quick")
