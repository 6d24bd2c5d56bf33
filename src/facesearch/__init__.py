"""facesearch: self-hosted face recognition on PostgreSQL + pgvector.

The package is laid out as three rooms that never share a process where it matters:

- ``facesearch.models``: the face model (detection, landmarks, embedding). Runs only inside the
  spawned worker processes of ``facesearch.inference``.
- ``facesearch.store``: the gallery store (PostgreSQL + pgvector, embedded or external).
- ``facesearch.cli`` (and later the HTTP service): talk to the store and to the worker pool.
"""

__version__ = "0.1.0"
