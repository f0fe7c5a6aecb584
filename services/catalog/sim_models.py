"""Descriptions of simulated models (``c2cq models add-sim``): a size and an architecture."""

from __future__ import annotations

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ModelKind

# (hidden, layers, intermediate, vocab) for a few familiar shapes; parameters follow from them.
_SHAPES = {
    "llama": [(576, 30, 1536, 49152), (896, 24, 4864, 151936), (2048, 16, 8192, 128256), (4096, 32, 14336, 128256)],
    "qwen3": [(1024, 28, 3072, 151936), (2560, 36, 9728, 151936), (4096, 36, 12288, 151936)],
}


def dense_params(hidden: int, layers: int, inter: int, vocab: int, tied: bool = False) -> int:
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden


def sim_model(name: str, hidden: int, layers: int, inter: int, vocab: int, arch: str = "LlamaForCausalLM",
              dtype_bytes: int = 2, max_context: int = 8192) -> ModelInfo:
    params = dense_params(hidden, layers, inter, vocab)
    return ModelInfo(name=name, kind=ModelKind.SIM, architecture=arch, parameters=params, bytes=params * dtype_bytes,
                     dtype="bf16" if dtype_bytes == 2 else "fp32", vocab_size=vocab, num_layers=layers,
                     hidden_size=hidden, max_context=max_context)


def generate(count: int, prefix: str = "sim", max_context: int = 8192) -> list[ModelInfo]:
    """A catalog of ``count`` simulated models cycling through the shapes above."""
    shapes = [(arch, s) for arch, ss in _SHAPES.items() for s in ss]
    out = []
    for i in range(count):
        arch, (h, n, f, v) = shapes[i % len(shapes)]
        archname = "Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"
        out.append(sim_model(f"{prefix}-{i:03d}", h, n, f, v, arch=archname, max_context=max_context))
    return out
