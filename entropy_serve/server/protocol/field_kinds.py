"""The kinds of OpenAI's fields (the README's field tables): honoured; accepted and
ignored because they cannot change the output (IGNORED); or refused with a 400 naming
them unless they hold their neutral value (NOT_SUPPORTED), so no client gets a wrong
answer with a 200. The tables are chat's and completions'; the Responses API has its
own (api/responses_api/request.py), checked by the same `refusing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationInfo

# OpenAI fields that cannot change what is generated: accepted and ignored.
IGNORED = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
)
# OpenAI fields this server does not honour: a 400 naming them unless they hold their
# neutral value (what a client that does not use them may still send).
NOT_SUPPORTED = {
    "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "reasoning_effort": (),
    "verbosity": (),
    "moderation": (),
    "best_of": (1,),
    "suffix": ("",),
}
NOT_SUPPORTED_WHY = {
    "functions": "deprecated by OpenAI and not supported: use tools",
    "function_call": "deprecated by OpenAI and not supported: use tool_choice",
    "modalities": "only text output is supported",
    "best_of": "best_of is not supported (vLLM's V1 engine has none); use n, or strategy self_consistency",
    "suffix": "insertion (suffix) is not supported",
}


def refusing(neutral: dict[str, tuple], why: dict[str, str] | None = None) -> Callable[[Any, ValidationInfo], Any]:
    """A validator for fields this server does not honour (`neutral`: each one's neutral
    values): a neutral value passes, anything else is a 400 saying why (`why`, per field)."""
    why = why or {}

    def refuse_unless_neutral(value: Any, info: ValidationInfo) -> Any:
        if value is None or value in neutral[info.field_name]:
            return value
        raise ValueError(why.get(info.field_name, f"{info.field_name} is not supported by this server"))

    return refuse_unless_neutral


refuse_unless_neutral = refusing(NOT_SUPPORTED, NOT_SUPPORTED_WHY)  # chat's and completions' fields
