"""Structured outputs and tool calls: the request fields, and the one grammar they resolve to.

Three fields can constrain what a request may generate, and a request uses at most one:
- `response_format` (OpenAI): `json_object`, or `json_schema` with a schema;
- `structured_outputs` (vLLM's extra): `json`, `regex`, `choice`, `grammar`,
  `json_object` or `structural_tag`, with vLLM's options;
- `tool_choice` `required` or a named function (with `tools`): the JSON the tool-call
  reply is parsed from (tool_calls.py), built from the tools' parameter schemas as
  vLLM builds it (`get_json_schema_from_tools`), so forced tool calls work with any model.
`output_constraint` turns them into vLLM's own StructuredOutputsParams, once, in
planning. Where vLLM samples, vLLM applies it (its grammar backend, xgrammar); where
our adapter samples or measures, the adapter applies the same grammar itself
(`grammar_text` here, adapters/grammar.py there), after measuring the model's entropy:
vLLM's runner masks the logits before any logits processor sees them, so under vLLM's
own mask the unconstrained model entropy could not be reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import xgrammar as xgr
from pydantic import BaseModel, ConfigDict, Field, model_validator
from vllm.sampling_params import StructuredOutputsParams
from vllm.v1.structured_output.utils import choice_as_grammar, grammar_is_likely_lark

from entropy_serve.server.errors import BadRequest

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for schema and function names
EMPTY_OBJECT_SCHEMA = {"type": "object", "properties": {}}


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the grammar always holds the output to the schema


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required when type is json_schema")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra, its field names: exactly one constraint."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [
            n
            for n in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
            if self._value(n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of json, regex, choice, grammar, json_object, structural_tag (got {given or 'none'})"
            )
        return self

    def _value(self, name: str) -> Any:
        return self.json_ if name == "json" else getattr(self, name)

    def to_vllm(self) -> StructuredOutputsParams:
        return StructuredOutputsParams(**self.model_dump(by_alias=True, exclude_none=True))


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def required_tools_schema(tools: list[Tool], parallel: bool) -> dict:
    """`tool_choice: required`: a JSON array of {name, parameters}, one item per call, as
    vLLM's `_get_json_schema_from_tools` builds it (one item only without parallel calls)."""
    items = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [tool.function.name]},
                    "parameters": tool.function.parameters or EMPTY_OBJECT_SCHEMA,
                },
                "required": ["name", "parameters"],
            }
            for tool in tools
        ]
    }
    schema = {"type": "array", "minItems": 1, "items": items}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def tool_schema(tools: list[Tool], choice: ToolChoice | None, parallel: bool) -> dict | None:
    """The JSON schema a forced tool choice constrains the output to (None: not forced)."""
    if isinstance(choice, NamedToolChoice):
        named = next(tool for tool in tools if tool.function.name == choice.function.name)
        return named.function.parameters or EMPTY_OBJECT_SCHEMA
    if choice == "required":
        return required_tools_schema(tools, parallel)
    return None


@dataclass(frozen=True)
class OutputConstraint:
    """What a request's output must match: vLLM's params, and the field that set them."""

    field: str  # response_format, structured_outputs or tool_choice: 400s name it
    params: StructuredOutputsParams

    def grammar_text(self) -> str:
        return grammar_text(self.params, self.field)


def output_constraint(
    response_format: ResponseFormat | None,
    structured_outputs: StructuredOutputs | None,
    forced_tool_schema: dict | None,
) -> OutputConstraint | None:
    """The request's one constraint in vLLM's terms, or None; 400 when it sets two."""
    sources = {
        "response_format": response_format is not None and response_format.type != "text",
        "structured_outputs": structured_outputs is not None,
        "tool_choice": forced_tool_schema is not None,
    }
    named = [name for name, given in sources.items() if given]
    if len(named) > 1:
        raise BadRequest(f"{named[1]}: cannot be combined with {named[0]} (both constrain the output)", param=named[1])
    if forced_tool_schema is not None:
        return OutputConstraint("tool_choice", StructuredOutputsParams(json=forced_tool_schema))
    if structured_outputs is not None:
        return OutputConstraint("structured_outputs", structured_outputs.to_vllm())
    if response_format is not None and response_format.type == "json_object":
        return OutputConstraint("response_format", StructuredOutputsParams(json_object=True))
    if response_format is not None and response_format.type == "json_schema":
        schema = response_format.json_schema.schema_ or {"type": "object"}
        return OutputConstraint("response_format", StructuredOutputsParams(json=schema))
    return None


def grammar_text(params: StructuredOutputsParams, field: str) -> str:
    """The constraint as xgrammar's EBNF text (what our adapter compiles), built as vLLM's
    xgrammar backend builds it; a constraint xgrammar cannot build is a 400 naming
    `field` (where the request set it) here, before it reaches the engine."""
    any_whitespace = not params.disable_any_whitespace
    try:
        if params.json is not None:
            schema = params.json if isinstance(params.json, str) else json.dumps(params.json)
            grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=any_whitespace)
        elif params.json_object:
            grammar = xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=any_whitespace)
        elif params.regex is not None:
            grammar = xgr.Grammar.from_regex(params.regex)
        elif params.choice is not None:
            grammar = xgr.Grammar.from_ebnf(choice_as_grammar(params.choice))
        elif params.grammar is not None:
            lark = grammar_is_likely_lark(params.grammar)
            grammar = xgr.Grammar.from_lark(params.grammar) if lark else xgr.Grammar.from_ebnf(params.grammar)
        else:
            raise BadRequest(
                "structured_outputs: structural_tag needs vLLM's own sampler: it cannot be combined with "
                "typical_p, adaptive_temperature or return_entropy",
                param=field,
            )
    except BadRequest:
        raise
    except (RuntimeError, ValueError, TypeError) as error:
        raise BadRequest(f"{field}: the constraint cannot be built as a grammar: {error}", param=field) from error
    return str(grammar)
