"""A control plane and two node hosts (network namespaces, a veth pair per node), CURVE on every tcp
socket: both nodes publish the registry's models from the one model store into their own shared
memory and serve them, the same prompt giving the same tokens on either host; an executor with an
unlisted key, one without CURVE and one expecting another server key are refused with a clear error
within the handshake timeout, and the cluster serves on. Root only; every namespace, veth and
process is removed, also on failure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from c2cq.client import AsyncClient
from hosts.cluster import MODELS, Cluster
from netns import host_star, need_netns

pytestmark = pytest.mark.timeout(300)
PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 30)), [7, 8], [40, 41, 42]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_netns()
    with host_star("q") as (control, nodes):
        c = Cluster(tmp_path_factory.mktemp("cluster"), control, nodes)
        try:
            c.up_control(http=True)
            for n in nodes:
                c.up_node(n)
            c.register_models()  # with everything running: the nodes learn of them from the control plane
            yield c
        finally:
            c.stop()


async def _serve(c: Cluster, rounds: int) -> list[tuple[str, int, tuple[int, ...], str]]:
    """Each round: every prompt, for both models at once; (model, prompt, tokens, executor) per request."""
    out = []
    async with AsyncClient(home=str(c.home(c.control)), timeout=120) as client:
        for _ in range(rounds):
            jobs = [(m, i) for i in range(len(PROMPTS)) for m in MODELS]
            streams = [await client.submit(m, prompt_token_ids=PROMPTS[i], max_tokens=8, ignore_eos=True)
                       for m, i in jobs]
            for (m, i), s in zip(jobs, streams):
                toks = tuple(t for b in [b async for b in s] for t in b.token_ids)
                out.append((m, i, toks, s.finished.executor))
    return out


def test_two_nodes_serve_the_models_published_on_both(cluster):
    c = cluster
    got = asyncio.run(_serve(c, rounds=2))
    hosts = {ex.split("-", 1)[0] for _, _, _, ex in got}
    assert hosts == {"n0", "n1"}, got  # both nodes served (each executor runs one model at a time)
    by_prompt: dict[tuple[str, int], set] = {}
    for m, i, toks, _ in got:
        assert len(toks) == 8
        by_prompt.setdefault((m, i), set()).add(toks)
    assert all(len(v) == 1 for v in by_prompt.values()), by_prompt  # greedy: one answer whichever host
    assert by_prompt[(MODELS[0], 0)] != by_prompt[(MODELS[1], 0)]  # two models, two answers
    assert not c.published(c.control)  # the control plane holds the registry, and publishes nothing


def test_the_control_planes_http_gateway_serves_from_the_nodes(cluster):
    """The real openai client, run on the control host (the gateway listens on its loopback)."""
    c = cluster
    script = textwrap.dedent(f"""
        import json, openai
        api = openai.OpenAI(base_url={c.http_url + '/v1'!r}, api_key="unused", max_retries=0, timeout=120)
        names = sorted(m.id for m in api.models.list())
        r = api.completions.create(model="tiny-b", prompt=[1, 2, 3, 4, 5], max_tokens=8, extra_body={{"ignore_eos": True}})
        print(json.dumps({{"models": names, "tokens": r.usage.completion_tokens, "finish": r.choices[0].finish_reason}}))
    """)
    p = subprocess.run(c.control.argv(sys.executable, "-c", script), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.splitlines()[-1]) == {"models": sorted(MODELS), "tokens": 8, "finish": "length"}


def test_unlisted_plain_and_misled_peers_are_refused_in_bounded_time(cluster):
    c = cluster
    node = c.nodes[0]
    base = ("run", "executor", "--backend", "cpu", "--join", c.join(node), "--handshake-timeout", "5")
    cases = {
        "refused this client's key": ("--id", "intruder", "--key-role", "stranger"),
        "one end without CURVE": ("--id", "plain", "--insecure"),
        "wrong server key": ("--id", "misled", "--server-key", str(c.keys / "stranger.key")),
    }
    for why, extra in cases.items():
        p = c.c2cq(node, *base, *extra, timeout=60, check=False)
        assert p.returncode == 2 and why in p.stderr, (why, p.returncode, p.stderr[-2000:])
    got = asyncio.run(_serve(c, rounds=1))  # undisturbed
    assert all(len(t) == 8 for _, _, t, _ in got)
