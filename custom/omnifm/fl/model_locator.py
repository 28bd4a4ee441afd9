"""Model locator: hands the saved global model (+ spec and bank) to FLARE's evaluation workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from omnifm.fl import wire
from omnifm.fl.persistor import MODEL_FILE, load_checkpoint
from omnifm.knowledge import KnowledgeBank

GLOBAL_MODEL_NAME = Path(MODEL_FILE).stem


class OmniFMModelLocator(ModelLocator):
    """Locates ``FL_global_model.pt`` (and the bank) that :class:`OmniFMPersistor` wrote in the app folder.

    Used with ``GlobalModelEval``: every site evaluates the final global model with its own personal
    parts, and FLARE writes the per-site results to ``cross_site_val/cross_val_results.json``.
    Subclasses set :attr:`model_file` and :meth:`_load` (the HE job's locator hands ciphertexts on).
    """

    model_file = MODEL_FILE

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        folder = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        if not (folder / self.model_file).is_file():
            self.log_error(fl_ctx, f"no {self.model_file} in the app folder: training saved no global model")
            return []
        return [GLOBAL_MODEL_NAME]

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        if model_name != GLOBAL_MODEL_NAME:
            raise ValueError(f"unknown model {model_name!r}; this locator provides {GLOBAL_MODEL_NAME!r}")
        data, meta = self._load(Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)))
        return DXO(DataKind.WEIGHTS, data=data, meta=meta)

    def _load(self, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The DXO data and meta of the saved global model in ``folder``."""
        weights, spec, bank_state = load_checkpoint(folder)
        return wire.to_numpy(weights), {wire.SPEC: spec, wire.BANK: plain_bank(bank_state)}


def plain_bank(bank_state: dict | None) -> dict | None:
    """A saved bank state dict as the plain lists sites receive in meta (None when there is no bank)."""
    return KnowledgeBank.from_state_dict(bank_state).to_plain() if bank_state is not None else None
