"""How a class's strategy rewrites a request (no engine)."""

from __future__ import annotations

from entropy_serve.probes.table import DifficultyTable
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest
from entropy_serve.server.strategies.difficulty import with_class_strategy


class FakeTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def test_chat_gets_the_instruction_as_its_one_system_message():
    easy = DifficultyTable().easy
    request = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": "2+2?"}],
        max_completion_tokens=50,
        temperature=1.3,
        strategy="difficulty",
    )
    steered = with_class_strategy(request, easy, 20, FakeTokenizer())
    assert [m.role for m in steered.messages] == ["system", "user"]
    assert steered.messages[0].text() == easy.instruction
    assert (steered.temperature, steered.top_p, steered.requested_max_tokens()) == (0.5, 0.95, 20)
    assert steered.strategy is None and request.strategy is not None  # the client's request is untouched
    with_system = ChatCompletionRequest(
        model="m",
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"}],
        strategy="difficulty",
    )
    merged = with_class_strategy(with_system, easy, 20, FakeTokenizer())
    assert [m.role for m in merged.messages] == ["system", "user"]
    assert merged.messages[0].text() == f"{easy.instruction}\n\nBe kind."


def test_completion_prompts_get_the_instruction_in_front():
    hard = DifficultyTable().hard
    text = with_class_strategy(CompletionRequest(model="m", prompt="2+2="), hard, 8, FakeTokenizer())
    assert text.prompt == f"{hard.instruction}\n\n2+2="
    assert text.max_tokens == 8 and text.temperature == 0.4
    ids = with_class_strategy(CompletionRequest(model="m", prompt=[5, 6]), hard, 8, FakeTokenizer())
    assert ids.prompt == [ord(c) for c in f"{hard.instruction}\n\n"] + [5, 6]
    normal = with_class_strategy(
        CompletionRequest(model="m", prompt="2+2="), DifficultyTable().normal, 8, FakeTokenizer()
    )
    assert normal.prompt == "2+2="  # no instruction: the prompt as sent
