"""The attempt plan of one call: which endpoint to try next, when to pause, when to give up,
as ``samtriton.transport``'s docstring (the one description of fail-over) says.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from typing import Generator, List, Optional, Sequence, Union

from .endpoints import Endpoints
from .errors import ContractMismatch, ModelNotReady, ServerUnavailable
from .versions import major

# Errors that say "not here": the next endpoint may serve the request.
FAIL_OVER = (ServerUnavailable, ModelNotReady, ContractMismatch)


@dataclass(frozen=True)
class Attempt:
    """Try the call at ``url``."""

    url: str
    deadline: float  # time.monotonic() by which the call must be done


@dataclass(frozen=True)
class Pause:
    """Sleep this long, then go on."""

    seconds: float


def attempts(
    endpoints: Endpoints, image_id: Optional[str], timeout: float, retries: int, backoff: float
) -> Generator[Union[Attempt, Pause], Optional[Exception], None]:
    """The plan of one call. Yields an ``Attempt`` (try this endpoint) or a ``Pause`` (sleep,
    then ``next``). After a failed attempt, ``send`` its error: a fail-over error marks the
    endpoint down and the plan goes on (a ``ContractMismatch`` only skips it: nothing was
    sent); the plan raises the error when nothing is left.

    Arguments:
      endpoints: the client's endpoints (their order and health).
      image_id: the image the call names (its rendezvous order), or None (a rotation).
      timeout: the call's deadline, seconds from now.
      retries: how many rounds may follow one in which every endpoint was unreachable.
      backoff: the first pause between rounds, seconds.
    """
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        error: Optional[Exception] = None
        skipped: List[ContractMismatch] = []
        for url in endpoints.order(image_id):
            sent = yield Attempt(url, deadline)
            if isinstance(sent, ContractMismatch):
                skipped.append(sent)
                continue
            error = sent
            if not isinstance(error, FAIL_OVER):
                raise error if error is not None else RuntimeError("attempts: send the failed attempt's error")
            endpoints.mark_down(url, error)
            if time.monotonic() >= deadline:
                raise error
        if error is None:  # every endpoint speaks another contract
            raise skipped[0] if len(skipped) == 1 else no_compatible_endpoint(skipped)
        pause = backoff * (2**attempt) * random.uniform(0.5, 1.5)
        # Only "unreachable" is worth waiting for; a missing model is a deployment matter.
        if not isinstance(error, ServerUnavailable) or attempt >= retries or time.monotonic() + pause >= deadline:
            raise error
        yield Pause(pause)


def no_compatible_endpoint(skipped: Sequence[ContractMismatch]) -> ContractMismatch:
    """The error of a call that every endpoint's contract version ruled out."""
    first = skipped[0]
    found = ", ".join(f"{e.url} has {e.server_version}" for e in skipped)
    return ContractMismatch(
        f"no endpoint serves {first.model} under this client's wire contract {first.client_version} (major "
        f"{major(first.client_version)}): {found}; use a samtriton client of their version, or re-export the "
        "repository with this one",
        first.url,
        first.model,
        first.server_version,
        first.client_version,
    )


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (monotonic), at least 1 ms: a client timeout of 0 means none."""
    return max(deadline - time.monotonic(), 0.001)
