"""Models on many hosts (pure): a request goes only to a host whose catalog has its model published.

Each node's catalog publishes the registry's model files into its host's shared memory and says so
(HostReported, folded here). An executor on a host whose catalog has the model published can start
it as usual; on a host still publishing it, it can too, but its first token waits for the rest of
the copy — a startup cost added to the placement estimate (ServerlessLLM's startup-time-aware
placement, across hosts); on any other host (the model not there, or no report from its catalog
yet) it cannot take the request. With no reports at all (one host, `c2cq up`) every executor may.
"""

from __future__ import annotations

from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import Command, ExecutorView, HostView, State

PUBLISH_BPS = 1e9  # a prior for copying a model file from the store into shared memory (NFS-bound)


def host_reported(st: State, e: ev.HostReported) -> list[Command]:
    st.hosts[e.host] = HostView(published=dict.fromkeys(e.published), publishing=dict.fromkeys(e.publishing),
                                at=e.at, peer_key=e.peer_key)
    return []  # the next tick dispatches what may now go there


def startup_s(st: State, x: ExecutorView, model: str, model_bytes: int) -> float | None:
    """What x's host adds to a request's TTFT for ``model``: 0 where the model is published, the rest
    of the copy where it is being published, None where x cannot take it."""
    if not st.hosts:
        return 0.0
    h = st.hosts.get(x.host)
    if h is None:
        return None
    if model in h.published:
        return 0.0
    if model in h.publishing:
        return model_bytes / PUBLISH_BPS
    return None
