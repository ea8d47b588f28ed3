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


class ContractMismatch(SamTritonError):
    """The endpoint's models follow another major version of the wire contract than this
    client (``contract.CONTRACT_VERSION``): nothing is sent there."""

    def __init__(
        self, message: str, url: str = "", model: str = "", server_version: str = "", client_version: str = ""
    ):
        super().__init__(message)
        self.url, self.model = url, model
        self.server_version, self.client_version = server_version, client_version


class ImageNotCached(SamTritonError):
    """The session model holds no embedding for the image id (never set there, or evicted);
    ``SamPredictor`` handles it by sending the image again."""
