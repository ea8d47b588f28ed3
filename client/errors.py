"""samtriton's exceptions. Each message names the model, field or endpoint and what to do."""


class SamTritonError(Exception):
    """Base class of every error samtriton raises on purpose."""


class InvalidInput(SamTritonError, ValueError):
    """A field of a request is malformed; raised before anything is sent, or by the server."""


class ServerError(SamTritonError):
    """The server answered with an error that is not about the request's input."""
