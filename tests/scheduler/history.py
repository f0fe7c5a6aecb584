"""Builders for recorded event sequences fed to the scheduler core (history tests)."""

from __future__ import annotations

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, SubmitRequest
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import ToClient, ToExecutor

MODELS = {name: sim_model(name, 576, 30, 1536, 49152) for name in ("m-a", "m-b", "m-c")}
C1, C2 = b"client-1", b"client-2"


class Seq:
    """Per-executor event sequence numbers, as a real executor would stamp them."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def __call__(self, eid: str, cls, **fields):
        self.n[eid] = self.n.get(eid, 0) + 1
        return cls(source=eid, seq=self.n[eid], ts_ns=self.n[eid], **fields)


S = Seq()


def ready(eid: str, at: float, boot: str = "b0") -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.SliceReady, executor_id=eid, boot_id=boot,
                                                       backend="sim", device=f"sim:{eid}",
                                                       memory_budget_bytes=10 * 2**30, link_bandwidth_bps=55e9,
                                                       max_batch=64))


def heartbeat(eid: str, at: float, boot: str = "b0") -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.Heartbeat, executor_id=eid, boot_id=boot, active=0,
                                                       waiting=0))


def submit(rid: str, at: float, model: str = "m-a", client: bytes = C1, max_tokens: int = 8,
           slo: SLO = SLO()) -> ev.Submitted:
    msg = SubmitRequest(request_id=rid, model=model, prompt="a b c", max_tokens=max_tokens, slo=slo)
    return ev.Submitted(at=at, client=client, msg=msg, info=MODELS.get(model))


def tokens(eid: str, xid: str, index: int, ids: tuple[int, ...], at: float) -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.TokensProduced, request_id=xid, index=index,
                                                       token_ids=ids, text="".join(f" t{i}" for i in ids)))


def completed(eid: str, xid: str, n: int, at: float) -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.RequestCompleted, request_id=xid,
                                                       finish_reason="length", prompt_tokens=3,
                                                       completion_tokens=n))


def kinds(cmds) -> list[tuple]:
    """A compact, comparable rendering of commands: (to, message tag, request id)."""
    out = []
    for c in cmds:
        to = c.client.decode() if isinstance(c, ToClient) else c.executor_id
        out.append((to, type(c.msg).__struct_config__.tag, getattr(c.msg, "request_id", None)))
    return out


def of(cmds, cls) -> list:
    return [c.msg for c in cmds if isinstance(getattr(c, "msg", None), cls)]


def to_exec(cmds) -> list:
    return [c for c in cmds if isinstance(c, ToExecutor)]
