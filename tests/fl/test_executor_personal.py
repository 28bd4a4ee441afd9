"""A site whose personal-state file is damaged or NaN answers BAD_TASK_DATA naming the file (issue 13, items 8-9).

The executor turns a ``ValueError`` from building the trainer into a ``BAD_TASK_DATA`` reply; before,
``torch.load``'s raw ``EOFError``/``OSError`` escaped (an execution exception naming no file) and a
NaN file was restored silently, so the site's uploads were rejected every round.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from omnifm.algorithms import initial_global, make_run_spec
from omnifm.data.site import SiteData
from omnifm.engine import TrainConfig
from omnifm.fl import executor as executor_module
from omnifm.fl import wire
from omnifm.fl.executor import OmniFMExecutor
from synthetic_cases import SMALL, FakeEngine as _Engine


def _volumes():
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(1, 32, 32, 4)).astype(np.float32), "label": np.zeros((1, 32, 32, 4), np.uint8)}]


@pytest.fixture
def site(tmp_path, monkeypatch):
    spec = make_run_spec("omnifm", model=SMALL, num_prototypes=2)
    small = TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2)
    monkeypatch.setattr(executor_module, "TrainConfig", lambda *args, **kwargs: small)  # whatever the arguments' order
    executor = OmniFMExecutor()
    data = SiteData(_volumes(), _volumes(), "test volumes", True, 0, [])
    monkeypatch.setattr(executor, "_site_data", lambda spec, fl_ctx: data)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(tmp_path), private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=True, sticky=False)
    weights, meta = initial_global(spec)
    task = DXO(DataKind.WEIGHTS, data=weights, meta={**meta, wire.SPEC: spec}).to_shareable()
    return executor, ctx, task, OmniFMExecutor._personal_path(spec, ctx)


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: p.write_bytes(b""), "cannot be read (the file is empty)"),
        (lambda p: p.write_bytes(b"PK\x03\x04 not a whole checkpoint"), "cannot be read"),
        (lambda p: torch.save({"personal": {"w": torch.full((2,), float("nan"))}, "round": 3}, p), "non-finite"),
    ],
    ids=["empty", "truncated", "nan"],
)
def test_a_bad_personal_file_is_a_bad_task_data_reply_naming_the_file(site, write, words, caplog):
    executor, ctx, task, path = site
    path.parent.mkdir(parents=True)
    write(path)
    with caplog.at_level(logging.ERROR):
        reply = executor.execute("train", task, ctx, Signal())
    assert reply.get_return_code() == ReturnCode.BAD_TASK_DATA
    assert str(path) in caplog.text and words in caplog.text and "move the file out of the folder" in caplog.text
