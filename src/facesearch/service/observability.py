"""Prometheus metrics and one structured log line per request.

Logs carry the route template (not the raw path), the domain, status, face count and timings:
never keys, photos or embeddings.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("facesearch.access")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's metrics, in a registry of its own (one per app, so tests can build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("facesearch_requests", "HTTP requests", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("facesearch_request_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("facesearch_inference_seconds",
                                   "Model worker time per photo, by stage", ["stage"],
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.search = Histogram("facesearch_search_seconds", "Gallery search time per photo",
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.faces = Gauge("facesearch_faces", "Faces stored, per domain", ["domain"], registry=r)
        self.people = Gauge("facesearch_people", "People, per domain", ["domain"], registry=r)
        self.workers = Gauge("facesearch_model_workers", "Model worker processes, by state",
                             ["state"], registry=r)
        self.restarts = Gauge("facesearch_model_worker_restarts",
                              "Model workers replaced after dying", registry=r)
        self.tasks = Gauge("facesearch_model_tasks", "Model tasks (photos) since start, by "
                           "outcome: started, timeouts, dropped (client gone), overloaded, "
                           "refused (poison photo)", ["outcome"], registry=r)

    def observe_inference(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.inference.labels(stage).observe(ms / 1e3)

    def render(self, domains: list[tuple[str, int, int]], pool_stats: Mapping[str, int]) -> bytes:
        """The exposition text; per-domain and worker gauges are refreshed at scrape time."""
        self.faces.clear()
        self.people.clear()
        for name, people, faces in domains:
            self.faces.labels(name).set(faces)
            self.people.labels(name).set(people)
        for state in ("size", "ready", "busy", "queued"):
            if state in pool_stats:
                self.workers.labels(state).set(pool_stats[state])
        self.restarts.set(pool_stats.get("restarts", 0))
        for outcome in ("started", "timeouts", "dropped", "overloaded", "refused"):
            self.tasks.labels(outcome).set(pool_stats.get(outcome, 0))
        return generate_latest(self.registry)


class RequestLog:
    """ASGI middleware: per-request metrics and one JSON log line.

    Handlers add details to ``request.state`` (``domain``, ``faces``, ``timings_ms``); the route is
    the template the router matched, so ids and names in paths do not explode the label space.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = uuid.uuid4().hex[:12]
        state["request_id"] = request_id
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            if route not in ("/metrics", "/healthz", "/readyz"):
                self.metrics.requests.labels(method, route, str(status)).inc()
                self.metrics.latency.labels(method, route).observe(elapsed)
            entry = {"event": "request", "id": request_id, "method": method, "route": route,
                     "status": status, "ms": round(elapsed * 1e3, 1)}
            for key in ("domain", "faces", "error"):
                if state.get(key) is not None:
                    entry[key] = state[key]
            if state.get("timings_ms"):
                entry["timings_ms"] = {k: round(v, 1) for k, v in state["timings_ms"].items()}
            log.info(json.dumps(entry, ensure_ascii=False))


class JsonFormatter(logging.Formatter):
    """Access lines are already JSON; other records become ``{"level", "logger", "message"}``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == log.name:
            return f'{{"ts": {record.created:.3f}, ' + message[1:]
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "message": message}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log would repeat each request, unstructured.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
