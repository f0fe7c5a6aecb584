"""The OpenAI-compatible HTTP gateway and /metrics: a client of the scheduler like any other (see DESIGN.md)."""
