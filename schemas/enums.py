"""Closed sets of values that travel on the wire (encoded as their string values)."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    MALFORMED = "malformed"  # the frame did not decode into a message of the socket's schema
    UNKNOWN_MODEL = "unknown_model"
    EMPTY_PROMPT = "empty_prompt"
    PROMPT_TOO_LONG = "prompt_too_long"
    BAD_MAX_TOKENS = "bad_max_tokens"
    BAD_SAMPLING = "bad_sampling"
    BAD_SLO = "bad_slo"
    DUPLICATE_REQUEST = "duplicate_request"
    QUEUE_FULL = "queue_full"
    NO_EXECUTOR = "no_executor"
    EXECUTOR_LOST = "executor_lost"
    UNKNOWN_REQUEST = "unknown_request"
    MODEL_IN_USE = "model_in_use"
    BAD_MODEL = "bad_model"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    SLO_UNATTAINABLE = "slo_unattainable"  # admission: no executor can meet the request's TTFT target


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"
    ERROR = "error"


class Backend(enum.StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    SIM = "sim"


class ModelKind(enum.StrEnum):
    REAL = "real"  # weights in a c2cq model file, served by cpu/cuda executors
    SIM = "sim"  # a description only, served by sim executors
