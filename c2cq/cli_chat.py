"""`c2cq chat --model M [MESSAGE]` and `c2cq generate --chat`: the model's own chat template, from the
terminal (the same rendering as the HTTP gateway's /v1/chat/completions)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from c2cq.rundir import RunDir


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model through its chat template (a message, or a conversation "
                                    "read line by line from the terminal)")
    p.add_argument("message", nargs="?", default=None, help="one message (default: read turns from stdin)")
    p.add_argument("--model", required=True)
    p.add_argument("--system", default=None, help="a system message first")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_chat)


def model_meta(rd: RunDir, model: str):
    """The model's template, tokenizer and context, from its catalog entry's model file."""
    from c2cq import catalog_client
    from c2cq.schemas.catalog import DescribeModel
    from c2cq.services.gateway.models import load_meta

    info = catalog_client.call(rd, DescribeModel(name=model)).info
    return load_meta(info, fallback=rd.catalog_dir / "models")


async def reply(client, meta, messages: list[dict], args: argparse.Namespace, out=sys.stdout) -> str:
    """Render ``messages``, stream the assistant's answer to ``out``, return it."""
    from c2cq.services.gateway.chat_template import render

    text = render(meta.chat_template, messages, model=meta.name, tokenizer_config=meta.tokenizer_config)
    ids = meta.encode_rendered(text)
    max_tokens = max(1, min(args.max_tokens, meta.max_context - len(ids)))
    pieces = []
    async for piece in client.stream(meta.name, prompt_token_ids=ids, max_tokens=max_tokens,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     seed=args.seed):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)


def cmd_chat(args: argparse.Namespace) -> int:
    from c2cq.cli_run import require_instance
    from c2cq.client import AsyncClient

    rd = RunDir.from_env(args.home)
    require_instance(rd)
    meta = model_meta(rd, args.model)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = args.message is None and sys.stdin.isatty()

    async def run() -> None:
        async with AsyncClient(home=args.home) as c:
            if args.message is not None:
                await reply(c, meta, messages + [{"role": "user", "content": args.message}], args)
                return
            while True:
                if interactive:
                    sys.stdout.write("> ")
                    sys.stdout.flush()
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line or line.strip() in ("/exit", "/quit"):
                    return
                if not line.strip():
                    continue
                messages.append({"role": "user", "content": line.rstrip("\n")})
                messages.append({"role": "assistant", "content": await reply(c, meta, messages, args)})

    asyncio.run(run())
    return 0


def generate_chat(args: argparse.Namespace) -> int:
    """`c2cq generate --chat PROMPT`: the prompt as one user message."""
    args.message, args.system = args.prompt, None
    return cmd_chat(args)
