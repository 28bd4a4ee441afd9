"""JobGuard: an edited (unsigned) meta.json or an unexpected deployment fails the run at START_RUN."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from omnifm.fl.job_guard import JobGuard, deployed_sites

SITES = ["site-1", "site-2", "site-3"]


def _meta(sites=("site-1", "site-2", "site-3"), min_clients=2, mandatory=()) -> dict:
    return {"deploy_map": {"app": ["server", *sites]}, "min_clients": min_clients, "mandatory_clients": list(mandatory)}


class _Engine:
    def __init__(self, names):
        self.names = names

    def get_clients(self):
        return [SimpleNamespace(name=n) for n in self.names]


def _run(guard: JobGuard, meta, deployed=SITES) -> list[str]:
    """Fire START_RUN; returns the panic reasons (FATAL_SYSTEM_ERROR event data)."""
    panics = []
    ctx = FLContext()
    ctx.set_prop(FLContextKey.JOB_META, meta, private=True, sticky=False)
    ctx.get_engine = lambda: _Engine(deployed)
    guard.fire_event = lambda event, fl_ctx: panics.append(fl_ctx.get_prop(FLContextKey.EVENT_DATA)) \
        if event == EventType.FATAL_SYSTEM_ERROR else None
    guard.handle_event(EventType.START_RUN, ctx)
    return panics


def test_matching_meta_runs():
    assert _run(JobGuard(SITES, 2), _meta()) == []
    assert _run(JobGuard("@ALL", 2), _meta(), deployed=["site-1", "site-2"]) == []


@pytest.mark.parametrize(
    "meta, deployed, expected",
    [
        (_meta(("site-1", "site-2", "site-9")), SITES, "deploy_map sends the job to ['site-1', 'site-2', 'site-9']"),
        ({"deploy_map": {"app": ["@ALL"]}, "min_clients": 2}, SITES, "deploy_map sends the job to '@ALL'"),
        (_meta(min_clients=1), SITES, "min_clients is 1 in meta.json, 2 in the signed app config"),
        (_meta(mandatory=["site-2"]), SITES, "mandatory_clients is ['site-2'] in meta.json"),
        (_meta(), ["site-1", "site-2", "site-9"], "deployed to ['site-9'], which the signed app config does not list"),
        (_meta(), ["site-1"], "deployed to 1 site(s) ['site-1'], fewer than the signed min_clients 2"),
    ],
)
def test_edited_meta_or_deployment_fails_the_run(meta, deployed, expected):
    (reason,) = _run(JobGuard(SITES, 2), meta, deployed)
    assert reason.startswith("job_guard: meta.json does not match the signed job")
    assert expected in reason, reason
    assert "rebuild the job with omnifm-build-job" in reason


def test_unpinned_sites_still_check_the_quorum():
    (reason,) = _run(JobGuard("@ALL", 2), _meta(min_clients=1))
    assert "min_clients is 1 in meta.json, 2 in the signed app config" in reason


def test_missing_meta_fails_closed():
    (reason,) = _run(JobGuard(SITES, 2), None)
    assert "no job meta" in reason


def test_other_events_do_nothing():
    guard = JobGuard(SITES, 2)
    ctx = FLContext()
    guard.handle_event(EventType.END_RUN, ctx)  # no meta, no engine: must not look


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sites": "site-1"}, "sites must be '@ALL' or a list"),
        ({"sites": []}, "non-empty list of site names"),
        ({"sites": ["server", "site-1"]}, "non-empty list of site names"),
        ({"sites": ["site-1", "site-1"]}, "lists a site twice"),
        ({"sites": SITES, "min_clients": 0}, "min_clients must be an int >= 1"),
        ({"sites": SITES, "min_clients": "2"}, "min_clients must be an int >= 1"),
        ({"sites": SITES, "min_clients": 4}, "min_clients 4 exceeds the 3 sites"),
        ({"sites": SITES, "mandatory_clients": [""]}, "mandatory_clients must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JobGuard(**kwargs)


def test_deployed_sites_reads_the_servers_app():
    assert deployed_sites({"deploy_map": {"a": ["site-1"], "b": ["server", "site-2"]}}) == ("site-2",)
    assert deployed_sites({"deploy_map": {"app": ["@ALL"]}}) == "@ALL"
    assert deployed_sites({}) is None
