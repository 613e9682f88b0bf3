"""Prometheus metrics of the HTTP layer (vLLM's own engine gauges share the registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)

REQUESTS = Counter("entropy_serve_requests", "Requests received, by endpoint.", ["endpoint"])
ERRORS = Counter("entropy_serve_errors", "Error responses, by HTTP status.", ["status"])
PROMPT_TOKENS = Counter("entropy_serve_prompt_tokens", "Prompt tokens processed.")
GENERATION_TOKENS = Counter("entropy_serve_generation_tokens", "Tokens generated.")
ABORTED = Counter("entropy_serve_requests_aborted", "Requests aborted in the engine because the client left.")
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
ENGINE_READY = Gauge(
    "entropy_serve_engine_ready", "1 while the engine answers (/health 200), else 0 (loading, dead, stopped)."
)

ENTROPY_BUCKETS_NATS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 11)
TEMPERATURE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2, 3, 5, 10)
TOKEN_ENTROPY_NATS = Histogram(
    "entropy_serve_token_entropy_nats",
    "Entropy of the model's distribution at each generated token (requests with return_entropy).",
    buckets=ENTROPY_BUCKETS_NATS,
)
SAMPLING_TEMPERATURE = Histogram(
    "entropy_serve_sampling_temperature",
    "Temperature each token was sampled at (0: greedy; requests with return_entropy).",
    buckets=TEMPERATURE_BUCKETS,
)
ENTROPY_STORE_KEYS = Gauge(
    "entropy_serve_entropy_store_keys",
    "Engine requests whose entropy records the server holds now (0 when idle: a growing value is a leak).",
)
ENTROPY_RECORDS = Counter(
    "entropy_serve_entropy_records",
    "Per-token entropy records received, by engine (vLLM's data-parallel rank): one per measured token "
    "(more: a rank published twice).",
    ["engine"],
)
TOKENS_BY_SAMPLER = Counter(
    "entropy_serve_tokens_by_sampler", "Generated tokens, by sampler (vllm: none of ours).", ["sampler"]
)

STRATEGY_LEAVES = Histogram(
    "entropy_serve_strategy_leaves",
    "Leaves (answered samples) per strategy request.",
    ["strategy"],
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
STRATEGY_AGREEMENT = Histogram(
    "entropy_serve_strategy_agreement",
    "The winning answer's share of the vote.",
    ["strategy"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
STRATEGY_LEAVES_SAVED = Counter(
    "entropy_serve_strategy_leaves_saved",
    "Leaves of the budget never sampled: the vote was decided early.",
    ["strategy"],
)
STRATEGY_TRACES_STOPPED = Counter(
    "entropy_serve_strategy_traces_stopped", "Traces aborted in the engine by deepconf: their confidence fell too low."
)
STRATEGY_TOKENS_SAVED = Counter(
    "entropy_serve_strategy_tokens_saved",
    "Estimated tokens not generated thanks to early stopping (unsampled leaves at the sampled ones' mean length, "
    "stopped traces up to the finished ones' mean length).",
    ["strategy"],
)
ESCALATIONS = Counter(
    "entropy_serve_escalations",
    "escalate/auto requests, by outcome: escalated to sampling, or answered greedily.",
    ["outcome"],
)
STRATEGY_FORKS = Counter("entropy_serve_strategy_forks", "Fork points opened by entropy_fork.")
STRATEGY_TOKENS = Counter(
    "entropy_serve_strategy_tokens",
    "Leaf tokens of strategy requests: generated, or shared with the tree a branch forked from.",
    ["strategy", "kind"],
)
DIFFICULTY_REQUESTS = Counter(
    "entropy_serve_difficulty_requests", "Requests routed by the difficulty probe, by class.", ["difficulty"]
)
PROBE_LATENCY_S = Histogram(
    "entropy_serve_probe_latency_seconds",
    "Seconds to read a prompt's hidden state and classify it.",
    buckets=LATENCY_BUCKETS_S,
)

# The calibration profile's token-entropy range, for the entropy-drift alert: the mean
# token entropy of live traffic leaving [low, high] means the model or the traffic changed.
PROFILE_ENTROPY_NATS = Gauge(
    "entropy_serve_profile_entropy_nats",
    "The served entropy profile's token entropy: mean, and the quartiles that bound normal (low: q0.25, high: q0.75).",
    ["bound"],
)
PROFILE_BOUNDS = {"low": "0.25", "high": "0.75"}


def export_profile(summary: dict | None) -> None:
    """Publish a calibration summary's entropy range (profiles without one export none)."""
    if not summary:
        return
    PROFILE_ENTROPY_NATS.labels(bound="mean").set(summary["mean_entropy_nats"])
    for bound, quantile in PROFILE_BOUNDS.items():
        PROFILE_ENTROPY_NATS.labels(bound=bound).set(summary["entropy_quantiles_nats"][quantile])
