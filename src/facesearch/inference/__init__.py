"""Face models in spawned worker processes.

The parent (CLI or API process) talks to the database; the workers load the model runtime. The two
never share a process, so the model runtime's native libraries can never clash with libpq's (the
seed's ``free(): invalid pointer``), and a crashing worker costs one photo, not the server.
"""

from .pool import ModelPool, ModelSpec

__all__ = ["ModelPool", "ModelSpec"]
