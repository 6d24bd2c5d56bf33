"""Face models in spawned worker processes.

The parent (CLI or API process) talks to the database; the workers load the model runtime. The two
never share a process, so the model runtime's native libraries can never clash with libpq's (the
seed's ``free(): invalid pointer``). The pool supervises its workers: one that crashes or is killed
costs only the task it was running (a :class:`~facesearch.errors.ModelError`, HTTP 503) and is
replaced; the other workers' tasks carry on.
"""

from .pool import ModelPool, ModelSpec

__all__ = ["ModelPool", "ModelSpec"]
