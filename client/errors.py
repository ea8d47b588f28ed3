"""samtriton's exceptions. Each message names the model, field or endpoint and what to do."""


class SamTritonError(Exception):
    """Base class of every error samtriton raises on purpose."""


class InvalidInput(SamTritonError, ValueError):
    """A field of a request is malformed; raised before anything is sent, or by the server."""


class ServerUnavailable(SamTritonError, ConnectionError):
    """The endpoint cannot be reached (down, restarting, wrong address) after the retries."""


class ModelNotReady(SamTritonError):
    """The server is up but the model is not loaded (unloaded, loading, or misnamed)."""


class RequestTimeout(SamTritonError, TimeoutError):
    """The call did not finish within its deadline."""


class ServerError(SamTritonError):
    """The server answered with an error that is not about the request's input."""


class ImageNotCached(SamTritonError):
    """The session model holds no embedding for the image id (never set there, or evicted);
    ``SamPredictor`` handles it by sending the image again."""
