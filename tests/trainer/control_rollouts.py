"""Test helper: replay a train-policy run's logged rollout requests on its initial
weights (the no-sync control), one optimizer step's requests of one kind (the policy's,
AEPO's) together as the trainer sent them, with the trainer's engine settings.

    python tests/trainer/control_rollouts.py RUN_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
import tempfile
from itertools import groupby
from pathlib import Path

from entropy_serve import model_store
from entropy_serve.trainer.policy import CONFIG_FILE, engine_config
from entropy_serve.trainer.policy_config import PolicyConfig
from entropy_serve.trainer.policy_log import ROLLOUTS_FILE, read_log
from entropy_serve.trainer.rollouts import RolloutEngine


def main(run_dir: Path, out: Path) -> None:
    settings = PolicyConfig.model_validate_json((run_dir / CONFIG_FILE).read_text())
    model = settings.model or str(model_store.prepare_default_model())
    engine = RolloutEngine(engine_config(settings, model), Path(tempfile.mkdtemp()))
    replayed = []
    try:
        for (step, kind), records in groupby(read_log(run_dir / ROLLOUTS_FILE), key=lambda r: (r["step"], r["kind"])):
            records = list(records)
            groups = engine.generate([r["body"] for r in records])
            for group in groups:
                replayed.append(
                    {
                        "step": step,
                        "kind": kind,
                        "responses": [{"completion_ids": r.completion_ids, "logprobs": r.logprobs} for r in group],
                    }
                )
    finally:
        engine.close()
    out.write_text(json.dumps(replayed))


if __name__ == "__main__":  # vLLM spawns engine processes
    main(Path(sys.argv[1]), Path(sys.argv[2]))
