"""The HE encryptor logs one line per upload, not FLARE's stock five (item 22 of issue 13)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from nvflare.apis.dxo import DXO, DataKind, from_shareable  # noqa: E402
from nvflare.apis.event_type import EventType  # noqa: E402
from nvflare.apis.fl_constant import FLContextKey, ReservedKey  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.fuel.sec.security_content_service import SecurityContentService  # noqa: E402

from omnifm.fl import he  # noqa: E402
from omnifm.fl.he_filters import OmniFMHEModelEncryptor  # noqa: E402

pytestmark = pytest.mark.he


@pytest.fixture()
def contexts(tmp_path):
    he.write_contexts(tmp_path)
    SecurityContentService.security_content_manager = None
    SecurityContentService.initialize(content_folder=str(tmp_path))
    yield tmp_path
    SecurityContentService.security_content_manager = None


def _ctx() -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.SECURE_MODE, False, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def test_one_info_line_per_encrypted_upload(contexts, caplog):
    encryptor = OmniFMHEModelEncryptor()
    encryptor.handle_event(EventType.START_RUN, _ctx())
    weights = {f"layer{i}.weight": np.full((8, 4), i, np.float32) for i in range(12)}
    shareable = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    with caplog.at_level(logging.INFO):
        out = encryptor.process(shareable, _ctx())
    assert isinstance(from_shareable(out).data[he.PACKED], ts.CKKSVector)
    lines = [r.getMessage() for r in caplog.records if r.name == encryptor.logger.name and r.levelno == logging.INFO]
    assert len(lines) == 1, lines
    assert "encrypted 12 tensors (384 values) as one packed CKKS vector" in lines[0]
    assert encryptor.logger.level == logging.NOTSET, "the level is restored after encrypting"
