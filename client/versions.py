"""Contract-version negotiation: which endpoints speak this client's wire contract.

Before the first request to a model on an endpoint, its config's
``contract.CONTRACT_VERSION_PARAMETER`` is read (once per endpoint and model; again after the
endpoint was unreachable, as a restarted replica may serve another export). An endpoint with
another major version than this client's is skipped, with one warning naming both versions,
and nothing is sent to it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Optional

from . import contract as C
from .errors import ContractMismatch

logger = logging.getLogger("samtriton")


def major(version: str) -> str:
    """The major part of a contract version ("2.1" -> "2")."""
    return version.split(".", 1)[0].strip()


class ContractVersions:
    """The wire-contract version each endpoint serves each model with (the model config's
    ``contract.CONTRACT_VERSION_PARAMETER``), as the client learnt it, and the verdict: same
    major version as this client, or skipped (one warning per endpoint and version)."""

    # A skipped endpoint is asked again after this long: its replica may have been upgraded.
    RECHECK_SECONDS = 30.0

    def __init__(self, client_version: str = C.CONTRACT_VERSION):
        self.client_version = client_version
        self._versions: Dict[tuple, tuple] = {}  # (url, model) -> (version, time.monotonic() when learnt)
        self._warned: set = set()
        self._lock = threading.Lock()

    def known(self, url: str, model: str) -> Optional[str]:
        """The version learnt for ``model`` at ``url``, or None: ask the endpoint."""
        with self._lock:
            entry = self._versions.get((url, model))
        if entry is None:
            return None
        version, learnt = entry
        if not self.compatible(version) and time.monotonic() - learnt > self.RECHECK_SECONDS:
            return None
        return version

    def learn(self, url: str, model: str, config) -> str:
        """Records the version in ``config`` (a ``ModelConfig`` protobuf) and returns it."""
        parameters = config.parameters
        version = (
            parameters[C.CONTRACT_VERSION_PARAMETER].string_value.strip()
            if C.CONTRACT_VERSION_PARAMETER in parameters
            else ""
        ) or C.UNVERSIONED_CONTRACT
        with self._lock:
            self._versions[(url, model)] = (version, time.monotonic())
        return version

    def forget(self, url: str) -> None:
        """The endpoint went away: whatever comes back there is asked again."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == url]:
                del self._versions[key]

    def compatible(self, version: str) -> bool:
        """``version`` has this client's major contract version."""
        return major(version) == major(self.client_version)

    def check(self, url: str, model: str, known: Optional[str], config=None) -> None:
        """Raises ``ContractMismatch`` when ``model`` at ``url`` follows another major version:
        the one in ``config`` (the model config just fetched), else ``known`` (learnt before)."""
        version = self.learn(url, model, config) if config is not None else known
        mismatch = self.mismatch(url, model, version) if version is not None else None
        if mismatch is not None:
            raise mismatch

    def mismatch(self, url: str, model: str, version: str) -> Optional[ContractMismatch]:
        """None when ``version`` is usable, else the error (logged once per endpoint and version)."""
        if self.compatible(version):
            return None
        error = ContractMismatch(
            f"{url} serves {model} under wire contract {version}; this client speaks {self.client_version} (another "
            f"major version): nothing is sent there. Use a samtriton client of contract {major(version)}.x for it, "
            "or re-export its repository with this samtriton",
            url,
            model,
            version,
            self.client_version,
        )
        with self._lock:
            first = (url, version) not in self._warned
            self._warned.add((url, version))
        if first:
            logger.warning("samtriton: %s", error)
        return error
