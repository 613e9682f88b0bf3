"""Client frameworks, unchanged, against the shared server: the OpenAI Agents SDK's default
(Responses) model running a tool call, and langchain-openai keeping our entropies."""

from __future__ import annotations

import asyncio

import openai
import pytest
from conftest import API_KEY, MODEL

pytestmark = pytest.mark.e2e  # drives a real server process


def test_agents_sdk_default_model_runs_a_tool_call(server):
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    asked_for: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked_for.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer with the tool.",
        tools=[get_weather],
        model=MODEL,
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=64),
        tool_use_behavior="stop_on_first_tool",
    )
    # The provider the SDK uses by default (the Responses API), pointed at us.
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True), tracing_disabled=True)
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", run_config=config))
    assert asked_for and result.final_output == f"sunny in {asked_for[0]}"
    assert [type(item).__name__ for item in result.new_items] == ["ToolCallItem", "ToolCallOutputItem"]


def test_langchain_keeps_entropies_in_its_logprobs(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=API_KEY,
        model=MODEL,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        extra_body={"return_entropy": True},
    )
    message = llm.invoke("What is the capital of France?")
    entries = message.response_metadata["logprobs"]["content"]
    assert len(entries) == message.response_metadata["token_usage"]["completion_tokens"]
    for entry in entries:
        assert entry["entropy"]["model_entropy_nats"] >= 0
        assert entry["entropy"]["sampled_entropy_nats"] == 0.0  # greedy: drawn from a point mass
