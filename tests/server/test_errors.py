from entropy_serve.server.errors import validation_message


def test_validation_message_names_each_field_and_value():
    errors = [
        {
            "loc": ("body", "temperature"),
            "msg": "Input should be less than or equal to 2",
            "type": "less_than_equal",
            "input": 3,
        },
        {"loc": ("body", "prompt"), "msg": "Field required", "type": "missing", "input": {}},
    ]
    message, param = validation_message(errors)
    assert message == "temperature: Input should be less than or equal to 2 (got 3); prompt: Field required"
    assert param == "temperature"


def test_validation_message_for_malformed_json():
    errors = [
        {"loc": ("body", 10), "msg": "JSON decode error", "type": "json_invalid", "ctx": {"error": "Expecting value"}}
    ]
    message, param = validation_message(errors)
    assert message == "malformed JSON body: Expecting value"


def test_model_validator_errors_lose_their_prefix():
    errors = [
        {
            "loc": ("body",),
            "msg": "Value error, echo: echoing the prompt is not supported",
            "type": "value_error",
            "input": {},
        }
    ]
    assert validation_message(errors)[0].startswith("echo: echoing the prompt is not supported")
