"""Pure-torch model runtime of the CPU executor: HF checkpoints in, streamed tokens out."""

from c2cq.services.executor.model.config import ModelConfig, parse_config
from c2cq.services.executor.model.engine import Engine, StepOutput, StepStats
from c2cq.services.executor.model.errors import ModelConfigError, OutOfKVBlocks, UnsupportedArchitecture
from c2cq.services.executor.model.sampler import SamplingParams
from c2cq.services.executor.model.weights import LinearWeights, MakeLinear, host_only

__all__ = [
    "Engine", "LinearWeights", "MakeLinear", "ModelConfig", "ModelConfigError", "OutOfKVBlocks", "SamplingParams",
    "StepOutput", "StepStats", "UnsupportedArchitecture", "host_only", "parse_config",
]
