"""Global Spectral Knowledge Bank and client-side prototype summaries (OmniFM sec. 3.3)."""

from __future__ import annotations

from omnifm.knowledge.bank import KnowledgeBank
from omnifm.knowledge.prototypes import count_retrievals, summarize_tokens

__all__ = ["KnowledgeBank", "count_retrievals", "summarize_tokens"]
