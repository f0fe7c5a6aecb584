"""`c2cq models add PATH` (an HF folder or a GGUF file) and `c2cq models add-random PRESET`.

Converts once into the catalog's model folder (atomically), then registers the file with the
catalog — the running catalog process when an instance is up (it checks and publishes the file in
shared memory), else the catalog store directly. A refused registration removes the converted file.
With a catalog running, the conversion also writes a byte-identical copy into its shared-memory
folder (``.staged-<pid>-<name>.c2cqm``), which the catalog publishes by rename: without it the
catalog reads the new file back from disk and copies it (3 of the 7 s of adding a 0.98 GB model).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from c2cq import catalog_client
from c2cq.errors import ConfigError, ModelError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import DescribeModel, RegisterModel
from c2cq.supervisor.manager import read_pid

# model-file modules import torch: they are imported when a command runs, not when the CLI starts
EXTENSION = ".c2cqm"


def register(msub) -> None:
    add = msub.add_parser("add", help="convert and register a Hugging Face folder or a GGUF file")
    add.add_argument("path", help="model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file")
    add.add_argument("--name", help="catalog name (default: the folder or file name)")
    add.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                     help="dtype of a dequantised GGUF (HF checkpoints keep their own dtype)")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add.add_argument("--store", action="store_true",
                     help="convert into the model store every node reads ($C2CQ_MODEL_STORE), not the catalog's folder")
    add.set_defaults(func=cmd_add)
    reg = msub.add_parser("register", help="register a model file already converted (e.g. in the model store)")
    reg.add_argument("path", help="a .c2cqm file under the catalog's folder or the model store")
    reg.add_argument("--name", help="catalog name (default: the file name)")
    reg.set_defaults(func=cmd_register)
    rnd = msub.add_parser("add-random", help="generate and register a random-weight model of a preset shape")
    from c2cq.services.catalog.presets import PRESETS

    rnd.add_argument("preset", choices=sorted(PRESETS))
    rnd.add_argument("--name", required=True)
    rnd.add_argument("--tokenizer-from", required=True, metavar="MODEL",
                     help="a registered real model whose tokenizer (and vocabulary size) the new model uses")
    rnd.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    rnd.add_argument("--seed", type=int, default=0)
    rnd.add_argument("--quiet", action="store_true")
    rnd.set_defaults(func=cmd_add_random)


def default_name(src: Path) -> str:
    stem = src.stem if src.is_file() else src.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"


def _target(rd: RunDir, name: str, store: bool = False) -> tuple[Path, Path | None]:
    """Where to write the model file, and its copy for the running catalog (None: no catalog runs)."""
    from c2cq.services.catalog.shm import published_path, staged_path

    published_path(Path("/"), name)  # the name must also name a shared-memory file
    try:
        catalog_client.call(rd, DescribeModel(name=name))
    except ModelError:
        pass  # not registered: good
    else:
        raise ConfigError(f"a model named {name!r} is already registered (c2cq models rm {name} first)")
    folder = rd.catalog_dir / "models"
    if store:
        if len(rd.model_roots) < 2:
            raise ConfigError("--store: no model store ($C2CQ_MODEL_STORE is not set)")
        folder = rd.model_roots[1]
    folder.mkdir(parents=True, exist_ok=True)
    running = read_pid(rd) is not None and rd.shm_dir.is_dir()
    return folder / f"{name}{EXTENSION}", staged_path(rd.shm_dir, name) if running else None


def register_timeout(nbytes: int) -> float:
    """How long to wait for the catalog's answer: it may have to copy the file into shared memory
    (about 0.3 GB/s on the 2-core development VM; 50 MB/s leaves a wide margin)."""
    return 30.0 + nbytes / 50e6


def _register(rd: RunDir, name: str, dst: Path, staged: Path | None) -> None:
    from c2cq.services.catalog.describe import describe_file

    try:
        info = describe_file(name, dst)
        copy = str(staged) if staged is not None and staged.is_file() else None
        catalog_client.call(rd, RegisterModel(info=info, path=str(dst), staged=copy),
                            timeout_s=register_timeout(info.bytes))
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)  # the catalog renamed it, or it is of no use now
    print(f"registered {name}: {info.architecture}, {info.parameters / 1e6:.1f}M parameters, "
          f"{info.bytes / 2**20:.1f} MiB {info.dtype}")


def add_path(rd: RunDir, src: Path, name: str | None = None, *, dtype: str = "fp32", progress: bool = True,
             store: bool = False) -> str:
    from c2cq.services.catalog.convert import convert_hf
    from c2cq.services.catalog.gguf_import import convert_gguf

    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder")
    name = name or default_name(src)
    gguf = src.is_file() and src.suffix.lower() == ".gguf"
    if not (gguf or src.is_dir()):
        raise ConfigError(f"{src}: expected a Hugging Face model folder or a .gguf file")
    dst, staged = _target(rd, name, store)
    try:
        if gguf:
            convert_gguf(src, dst, dtype=dtype, progress=progress, also=staged)
        else:
            convert_hf(src, dst, progress=progress, also=staged)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    _register(rd, name, dst, staged)
    return name


def add_random(rd: RunDir, preset: str, name: str, tokenizer_from: str, *, dtype: str = "fp32", seed: int = 0,
               progress: bool = True) -> str:
    from c2cq.services.catalog import layout
    from c2cq.services.catalog.synth import preset_config

    src = catalog_client.call(rd, DescribeModel(name=tokenizer_from)).info
    entry = rd.catalog_dir / "models" / f"{tokenizer_from}{layout.EXTENSION}"
    if not entry.exists():
        raise ConfigError(f"{tokenizer_from!r} has no model file to take a tokenizer from")
    mf = layout.read_layout(entry)
    meta = {"tokenizer_json": mf.tokenizer_json, "tokenizer_config": mf.tokenizer_config,
            "chat_template": mf.chat_template, "generation_config": mf.generation_config}
    eos = src.eos_token_ids[0] if src.eos_token_ids else None
    return add_generated(rd, preset_config(preset, vocab_size=src.vocab_size, eos_token_id=eos), name, meta,
                         dtype=dtype, seed=seed, progress=progress)


def add_generated(rd: RunDir, config: dict, name: str, meta: dict | None = None, *, dtype: str = "fp32",
                  seed: int = 0, progress: bool = True) -> str:
    """Register a random-weight model of ``config`` (a Hugging Face config.json's fields); ``meta``: its
    tokenizer fields (none: requests must send prompt token ids)."""
    from c2cq.services.catalog.synth import write_random

    dst, staged = _target(rd, name)
    try:
        write_random(dst, config, meta or {}, dtype=dtype, seed=seed, progress=progress, also=staged)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    _register(rd, name, dst, staged)
    return name


def cmd_add(args: argparse.Namespace) -> int:
    add_path(RunDir.from_env(args.home), Path(args.path), args.name, dtype=args.dtype, progress=not args.quiet,
             store=args.store)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """The file stays where it is (a refused registration leaves it), and is checked by the catalog."""
    from c2cq.services.catalog.describe import describe_file

    rd, path = RunDir.from_env(args.home), Path(args.path).resolve()
    name = args.name or default_name(path)
    info = describe_file(name, path)
    catalog_client.call(rd, RegisterModel(info=info, path=str(path)), timeout_s=register_timeout(info.bytes))
    print(f"registered {name}: {info.architecture}, {info.parameters / 1e6:.1f}M parameters, "
          f"{info.bytes / 2**20:.1f} MiB {info.dtype}")
    return 0


def cmd_add_random(args: argparse.Namespace) -> int:
    add_random(RunDir.from_env(args.home), args.preset, args.name, args.tokenizer_from, dtype=args.dtype,
               seed=args.seed, progress=not args.quiet)
    return 0
