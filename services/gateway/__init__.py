"""The HTTP gateway: the OpenAI-compatible API and /metrics, a client of the scheduler like any other."""
