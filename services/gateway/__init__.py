"""The OpenAI-compatible HTTP gateway: a client of the scheduler like any other (see DESIGN.md)."""
