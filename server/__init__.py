"""samtriton.server: what runs inside tritonserver or starts it.

- ``launcher``: ``EmbeddedTriton`` (the embedded tritonserver of ``samtriton serve``).
- ``models/``: the python-backend models, one ``model.py`` each (copied into repositories).
- ``runtime``, ``config``, ``embedding_cache``, ``amg_filter``, ``amg_stage``, ``metrics``,
  ``lifecycle``, ``torch_runtime``, ``torch_stage``: the stages' shared logic.

Imports: the client's shared core (contract, errors, validation, transforms) and, for the
torch backends, the export's model wrappers; never the tools.
"""

from samtriton.server.launcher import EmbeddedTriton, ServerStartError, free_port, stop_process

__all__ = ["EmbeddedTriton", "ServerStartError", "free_port", "stop_process"]
