"""Prometheus metrics of the HTTP layer (vLLM's own engine gauges share the registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)

REQUESTS = Counter("entropy_serve_requests", "Requests received, by endpoint.", ["endpoint"])
ERRORS = Counter("entropy_serve_errors", "Error responses, by HTTP status.", ["status"])
PROMPT_TOKENS = Counter("entropy_serve_prompt_tokens", "Prompt tokens processed.")
GENERATION_TOKENS = Counter("entropy_serve_generation_tokens", "Tokens generated.")
ABORTED = Counter(
    "entropy_serve_requests_aborted", "Requests aborted in the engine because the client left."
)
TIME_TO_FIRST_TOKEN_S = Histogram(
    "entropy_serve_time_to_first_token_seconds",
    "Seconds from request arrival to the first generated token.",
    buckets=LATENCY_BUCKETS_S,
)
E2E_LATENCY_S = Histogram(
    "entropy_serve_e2e_request_latency_seconds",
    "Seconds from request arrival to its last token.",
    buckets=LATENCY_BUCKETS_S,
)
REQUESTS_RUNNING = Gauge("entropy_serve_requests_running", "Requests being generated now.")
