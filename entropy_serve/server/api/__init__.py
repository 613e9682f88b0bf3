"""The HTTP edge: routes (app.py; Files and Batches in batch_routes.py; the Responses API
in responses_api/), the body-size guard and error counter (middleware.py), JSON bodies
within bounds (request_body.py), replies as JSON or server-sent events (answer.py), and
SIGTERM's drain (drain.py). Everything here is HTTP; answering itself is core/'s."""
