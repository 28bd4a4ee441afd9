"""Server-side check that the job's unsigned ``meta.json`` matches what the signed app config says.

FLARE 2.9 signs (and verifies) the job's app folders only. ``meta.json`` - the ``deploy_map``
(which sites get the job), ``min_clients`` (how many must be connected to start and stay alive)
and ``mandatory_clients`` - is not covered: an edited ``meta.json`` still runs. :class:`JobGuard`
sits in the signed ``config_fed_server.json`` and carries the intended values; at the start of
the run it compares them with the job meta the server actually scheduled and with the sites the
job was deployed to, and fails the job (before any model leaves the server) on a mismatch.

What it cannot do: the server's scheduler acts on ``meta.json`` before any job component runs,
so a site added to ``deploy_map`` still receives the (signed) app config; the guard stops the run
before the first task, so that site never receives weights. Other meta fields
(``resource_spec``, ``name``) are not checked.

Example (``config_fed_server.json``; ``omnifm-build-job --sites/--min-clients`` keeps it in step
with ``meta.json``)::

    {"id": "job_guard", "path": "omnifm.fl.job_guard.JobGuard",
     "args": {"sites": ["site-1", "site-2", "site-3"], "min_clients": "{min_clients}"}}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

ALL_SITES = "@ALL"
SERVER = "server"
FIX = (
    "meta.json is not covered by FLARE's job signature, so it was edited after the job was built or "
    "built by hand: rebuild the job with omnifm-build-job (--sites / --min-clients set both meta.json "
    "and the signed app config) and submit it again"
)


def _names(value: Iterable[Any], what: str) -> tuple[str, ...]:
    names = tuple(value)
    if not names or not all(isinstance(n, str) and n and n != SERVER for n in names):
        raise ValueError(f"{what} must be '{ALL_SITES}' or a non-empty list of site names, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a site twice: {list(names)!r}")
    return tuple(sorted(names))


def _sites_arg(sites: str | Sequence[str]) -> str | tuple[str, ...]:
    if sites == ALL_SITES:
        return ALL_SITES
    if isinstance(sites, str):
        raise ValueError(f"sites must be '{ALL_SITES}' or a list of site names, got {sites!r}")
    return _names(sites, "sites")


def deployed_sites(meta: dict) -> str | tuple[str, ...] | None:
    """The sites ``meta.json``'s ``deploy_map`` sends the server's app to (``"@ALL"``), or None if none."""
    for members in (meta.get("deploy_map") or {}).values():
        members = list(members or [])
        if ALL_SITES in members:
            return ALL_SITES
        if SERVER in members:
            return tuple(sorted(m for m in members if m != SERVER))
    return None


def mismatches(
    meta: dict, participants: Iterable[str], sites: str | tuple[str, ...], min_clients: int, mandatory: tuple[str, ...]
) -> list[str]:
    """What in ``meta`` (and the deployment) differs from the signed values; empty when they agree."""
    found = []
    deployed = deployed_sites(meta)
    if sites != ALL_SITES and deployed != sites:
        shown = list(deployed) if isinstance(deployed, tuple) else deployed
        found.append(f"deploy_map sends the job to {shown!r}, the signed app config expects "
                     f"{sites if sites == ALL_SITES else list(sites)!r}")
    if meta.get("min_clients") != min_clients:
        found.append(f"min_clients is {meta.get('min_clients')!r} in meta.json, {min_clients} in the signed app config")
    listed = tuple(sorted(meta.get("mandatory_clients") or []))
    if listed != mandatory:
        found.append(f"mandatory_clients is {list(listed)!r} in meta.json, {list(mandatory)!r} in the signed "
                     "app config")
    names = sorted(participants)
    strangers = [n for n in names if sites != ALL_SITES and n not in sites]
    if strangers:
        found.append(f"the job was deployed to {strangers}, which the signed app config does not list")
    if len(names) < min_clients:
        found.append(f"the job was deployed to {len(names)} site(s) {names}, fewer than the signed "
                     f"min_clients {min_clients}")
    return found


class JobGuard(FLComponent):
    """Fails the run at ``START_RUN`` when ``meta.json`` or the deployment disagree with the signed values.

    Args:
        sites: the sites the job is meant for, as in ``meta.json``'s ``deploy_map`` when the job was
            built (``omnifm-build-job --sites a,b`` writes them). ``"@ALL"`` pins no sites: only the
            quorum, ``mandatory_clients`` and the number of deployed sites are checked (the
            repository's job, which the simulator and the tests run with varying site lists).
        min_clients: the quorum; reference the config's ``{min_clients}`` variable, which
            ``ScatterAndGather`` uses too.
        mandatory_clients: sites that must take part (``meta.json``'s ``mandatory_clients``).

    Raises:
        ValueError: a malformed argument (named in the message).
    """

    def __init__(
        self, sites: str | Sequence[str] = ALL_SITES, min_clients: int = 1, mandatory_clients: Sequence[str] = ()
    ) -> None:
        super().__init__()
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise ValueError(f"min_clients must be an int >= 1, got {min_clients!r}")
        self.sites = _sites_arg(sites)
        if self.sites != ALL_SITES and min_clients > len(self.sites):
            raise ValueError(f"min_clients {min_clients} exceeds the {len(self.sites)} sites in sites")
        self.min_clients = min_clients
        self.mandatory = tuple(sorted(mandatory_clients)) if mandatory_clients else ()
        if self.mandatory:
            _names(self.mandatory, "mandatory_clients")

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.check(fl_ctx)

    def check(self, fl_ctx: FLContext) -> bool:
        """Compare and panic on a mismatch; returns whether the job may run."""
        meta = fl_ctx.get_prop(FLContextKey.JOB_META)
        if not isinstance(meta, dict):
            self.system_panic("job_guard: the server has no job meta to check; refusing to run the job", fl_ctx)
            return False
        participants = [c.name for c in fl_ctx.get_engine().get_clients()]
        found = mismatches(meta, participants, self.sites, self.min_clients, self.mandatory)
        if found:
            self.system_panic(f"job_guard: meta.json does not match the signed job: {'; '.join(found)}. {FIX}", fl_ctx)
            return False
        shown = self.sites if self.sites == ALL_SITES else list(self.sites)
        self.log_info(fl_ctx, f"job_guard: meta.json matches the signed job (sites {shown}, "
                              f"min_clients {self.min_clients}); deployed to {sorted(participants)}")
        return True
