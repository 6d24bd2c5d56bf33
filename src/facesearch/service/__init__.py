"""The HTTP service: ``facesearch serve``.

- :mod:`.app` builds the FastAPI application (start-up, errors, middleware);
- :mod:`.routes` holds the v1 API, one module per resource;
- :mod:`.state` is what the running service holds and the auth dependencies;
- :mod:`.auth`, :mod:`.uploads` and :mod:`.observability` are the cross-cutting parts.

The service never imports the model runtime: photos go to spawned worker processes
(:mod:`facesearch.inference`).
"""
