"""c2cq: serverless LLM serving without cold starts."""

from c2cq.errors import C2CQError, PeerDeadError, RequestError, RequestTimeout

__all__ = ["AsyncClient", "Client", "C2CQError", "PeerDeadError", "RequestError", "RequestTimeout"]


def __getattr__(name: str):  # the client pulls in zmq: import it only when asked for
    if name == "AsyncClient":
        from c2cq.client import AsyncClient

        return AsyncClient
    if name == "Client":
        from c2cq.blocking import Client

        return Client
    raise AttributeError(name)
