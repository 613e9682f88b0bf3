"""The request core, in the order a request travels: the in-process service
(service.py: the HTTP API without HTTP) -> the answering context strategies share
(answering.py) -> the sampler decision (sampler_plan.py) -> the plan and its engine
jobs (planning.py, prompts rendered by rendering.py) -> running them (submission.py).
Beside it, the durable state of files, batches and stored responses (store.py) and the
background batch runner (batches.py)."""
