"""samtriton's exceptions. Each message names the model, field or endpoint and what to do."""

from typing import Optional


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


def from_status(
    status: str, message: str, model: str, url: str, timeout: float, image_id: Optional[str] = None
) -> SamTritonError:
    """The exception for a failed call, chosen by Triton's gRPC status code.

    Arguments:
      status: the code's name ("NOT_FOUND", ...; "" when the server gave none).
      message: the server's text, kept for people.
      model: the model called.
      url: the endpoint.
      timeout: the call's deadline in seconds.
      image_id: the image of a call that may find it evicted (a NOT_FOUND is then
        ``ImageNotCached``), else None.
    """
    if status == "UNAVAILABLE":
        return ServerUnavailable(
            f"{url} is unavailable for {model} ({message}); check that the server is running and reachable"
        )
    if status == "DEADLINE_EXCEEDED":
        return RequestTimeout(
            f"{model} at {url} did not answer within {timeout:g} s; raise timeout= or check the server's load"
        )
    if status == "NOT_FOUND":
        if image_id is not None:
            return ImageNotCached(f"{model} at {url} holds no embedding for image {image_id} ({message})")
        return ModelNotReady(
            f"{model} at {url} is not ready ({message}); load it (explicit model control) or check the deployment name"
        )
    if status == "INVALID_ARGUMENT":
        return InvalidInput(f"{model} at {url} rejected the request: {message}")
    return ServerError(f"{model} at {url}: {status or 'error'} {message}".strip())
