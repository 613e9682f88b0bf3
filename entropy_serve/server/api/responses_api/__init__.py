"""OpenAI's Responses API (`/v1/responses`), answered by the chat path."""
