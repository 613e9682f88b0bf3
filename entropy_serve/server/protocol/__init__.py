"""OpenAI's shapes, in and out: request bodies validated strictly (requests.py, chat
messages in messages.py, our extensions in extensions.py, structured outputs and tools
in constraints.py), and replies built as the `openai` package's own types
(responses.py, streaming.py's chunks, logprobs.py, tool_calls.py's reading of calls)."""
