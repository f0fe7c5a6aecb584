"""The wire contract: one sample of every message, and the golden files under contract/.

``python -m c2cq.schemas.contract --write`` regenerates the golden files after an intended
wire change (append fields with defaults; never rename, retype or reorder). The test
tests/schemas/test_contract.py fails whenever the encoding drifts from them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from c2cq.codec import encode, union_members
from c2cq.schemas import catalog as cat
from c2cq.schemas import client as cl
from c2cq.schemas import executor as ex
from c2cq.schemas.enums import ErrorCode, FinishReason, ModelKind
from c2cq.schemas.refs import ShmRef

CONTRACT_DIR = Path(__file__).parent / "contract"
SOCKETS: dict[str, Any] = {
    "client_to_scheduler": cl.ClientToScheduler,
    "scheduler_to_client": cl.SchedulerToClient,
    "scheduler_to_executor": ex.SchedulerToExecutor,
    "executor_to_scheduler": ex.ExecutorToScheduler,
    "to_catalog": cat.ToCatalog,
    "from_catalog": cat.FromCatalog,
    "node_catalog_to_scheduler": cat.NodeCatalogToScheduler,
    "scheduler_to_node_catalog": cat.SchedulerToNodeCatalog,
}

_EV = dict(source="exec-0", seq=7, ts_ns=123456789)
_SAMPLING = cl.SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=1, stop=("\n\n",), stop_token_ids=(2,))
_INFO = cat.ModelInfo(name="smollm2-135m", kind=ModelKind.REAL, architecture="LlamaForCausalLM", parameters=134515008,
                      bytes=269030016, dtype="bf16", vocab_size=49152, num_layers=30, hidden_size=576,
                      max_context=8192, shm=ShmRef(path="/dev/shm/c2cq-x/smollm2-135m.c2cqm", size=269058048),
                      eos_token_ids=(2,))


def samples() -> dict[str, msgspec.Struct]:
    """One fully populated instance of every message type, by tag."""
    msgs = [
        cl.SubmitRequest(request_id="r1", model="m", prompt="hi", max_tokens=8, sampling=_SAMPLING,
                         slo=cl.SLO(ttft_ms=500.0, tpot_ms=50.0), client_request_id="mine"),
        cl.CancelRequest(request_id="r1"),
        cl.Ping(nonce=3),
        cl.StatusQuery(nonce=4),
        cl.RequestAccepted(request_id="r1", model="m", client_request_id="mine"),
        cl.TokensEmitted(request_id="r1", seq=0, token_ids=(5, 6), text=" a b"),
        cl.RequestFinished(request_id="r1", finish_reason=FinishReason.LENGTH,
                           usage=cl.Usage(prompt_tokens=2, completion_tokens=8),
                           timings=cl.Timings(queued_ms=1.5, ttft_ms=20.0, e2e_ms=90.0), executor="exec-0",
                           switched=True),
        cl.RequestRejected(request_id="r2", code=ErrorCode.UNKNOWN_MODEL, message="unknown model 'x'"),
        cl.Pong(nonce=3),
        cl.StatusReply(nonce=4, executors=(cl.ExecutorStatus(executor_id="exec-0", state="ready", backend="sim",
                                                              device="sim:0", model="m", alpha=0.5,
                                                              active_requests=1, queued_requests=0),),
                       requests_in_flight=1, requests_total=9, waiting={"other-model": 2}),
        cl.MetricsQuery(nonce=5),
        cl.MetricsReply(nonce=5, events=42, families=(
            cl.MetricFamily(name="c2cq:generation_tokens", kind="counter", help="Output tokens.", labels=("model_name",),
                            series=(cl.MetricSeries(labels=("m",), value=8.0),)),
            cl.MetricFamily(name="c2cq:time_to_first_token_seconds", kind="histogram", help="TTFT.",
                            labels=("model_name",), bounds=(0.1, 1.0),
                            series=(cl.MetricSeries(labels=("m",), buckets=(1, 0, 2), sum=3.5),)))),
        cl.ModelsQuery(nonce=6),
        cl.ModelsReply(nonce=6, models=(cl.ModelEntry(name="m", kind="real", architecture="LlamaForCausalLM",
                                                      parameters=134_515_008, dtype="bf16", vocab_size=49152,
                                                      max_context=8192),), error=None),
        ex.AssignRequest(request_id="r1", model="m", prompt_token_ids=(1, 2), max_tokens=8, sampling=_SAMPLING,
                         resume_token_ids=(5,)),
        ex.AbortRequest(request_id="r1"),
        ex.ApplyPlan(alpha=0.25, chunk_tokens=256),
        ex.PreloadModel(model="m", alpha=0.5),
        ex.EvictModel(model="m"),
        ex.Drain(),
        ex.SliceReady(**_EV, executor_id="exec-0", boot_id="b00t", backend="sim", device="sim:0",
                      memory_budget_bytes=10 * 2**30, link_bandwidth_bps=55e9, max_batch=64,
                      link_group="GPU-0", host="node-a"),
        ex.TokensProduced(**_EV, request_id="r1", index=0, token_ids=(5,), text=" a"),
        ex.RequestCompleted(**_EV, request_id="r1", finish_reason=FinishReason.STOP, prompt_tokens=2,
                            completion_tokens=1),
        ex.StepStats(**_EV, step_s=0.01, tokens=3, prefill_tokens=2, decode_tokens=1, batch=1, bytes_hbm=100,
                     bytes_host=900, model="m", kv_device_used=30, kv_device_free=2, kv_host_used=12,
                     kv_host_free=52, kv_rotations=3, kv_bytes_rotated=786432),
        ex.ModelResident(**_EV, model="m", alpha=0.1, bytes_resident=100, switched_s=0.002),
        ex.Heartbeat(**_EV, executor_id="exec-0", boot_id="b00t", active=1, waiting=0),
        cat.DescribeModel(name="m"),
        cat.ListModels(),
        cat.RegisterModel(info=_INFO, path="/home/u/.c2cq/catalog/models/smollm2-135m.c2cqm",
                          staged="/dev/shm/c2cq-0123abcd/.staged-4242-smollm2-135m.c2cqm"),
        cat.RemoveModel(name="m"),
        cat.ListFiles(),
        cat.ModelFiles(files=(cat.RegisterModel(info=_INFO, path="smollm2-135m.c2cqm"),)),
        cat.HostModels(host="node-a", published=("m",), publishing=("smollm2-135m",)),
        cat.ModelInfoReply(info=_INFO),
        cat.ModelListReply(models=(_INFO,)),
        cat.CatalogError(code=ErrorCode.MODEL_IN_USE, message="in use"),
        cat.ModelRegistered(source="catalog", seq=1, ts_ns=5, info=_INFO, path="/p"),
        cat.ModelRemoved(source="catalog", seq=2, ts_ns=6, name="m"),
    ]
    return {type(m).__struct_config__.tag: m for m in msgs}


def all_message_types() -> set[type]:
    return {t for u in SOCKETS.values() for t in union_members(u)}


# JSON Schema keywords whose value is prose for readers, never something a peer encodes or checks.
# msgspec fills ``description`` from docstrings, and how it renders them changed between releases
# (0.23 dedents them): the golden file pins what the wire carries, not how a docstring is printed.
DOC_ONLY_KEYWORDS = frozenset({"description"})
# Keywords whose value maps names (field names, component names) to schemas, not a schema itself:
# a field that happens to be called "description" must stay in the contract.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "patternProperties", "dependentSchemas"})


def wire_only(schema: Any) -> Any:
    """A JSON Schema without its documentation-only keywords, at every depth."""
    if isinstance(schema, list):
        return [wire_only(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: ({name: wire_only(sub) for name, sub in v.items()} if k in _SCHEMA_MAPS and isinstance(v, dict)
                else wire_only(v))
            for k, v in schema.items() if k not in DOC_ONLY_KEYWORDS}


def schema_doc() -> dict:
    """The JSON Schema of every socket's Union, as the wire sees it (no docstring text)."""
    out = {}
    for name, union in SOCKETS.items():
        (schema,), components = msgspec.json.schema_components([union], ref_template="#/$defs/{name}")
        out[name] = wire_only({"schema": schema, "$defs": components})
    return out


def write() -> None:
    CONTRACT_DIR.mkdir(exist_ok=True)
    for tag, msg in samples().items():
        (CONTRACT_DIR / f"{tag}.msgpack").write_bytes(encode(msg))
    (CONTRACT_DIR / "schema.json").write_text(json.dumps(schema_doc(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="regenerate the golden files")
    if p.parse_args().write:
        write()
