"""lmms-eval's own evaluator on a local task of the sample's REC items, with an exported tiny model:
the same answers and the same score as `make eval` (the adapter converts Lyrics' boxes for lmms-eval).

Slow, and in its own environment (`make test-lmms`, which CI runs): it extracts the sample, converts the tiny LLM and runs the frozen models online.
The stage-2 model is the untrained one `make finetune --from-scratch` starts from: what is compared is
the path (photos through the frozen models online vs the cache, lmms-eval's parsing and scoring vs
ours), which an untrained model exercises as well as a trained one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is installed in its own environment: `make test-lmms` runs this test")

from lyrics.config import load_config  # noqa: E402
from lyrics.evaluate.lmms import lmms_box_answer, write_rec_task  # noqa: E402
from lyrics.evaluate.run import PREDICTIONS, EvalPlan, evaluate  # noqa: E402
from lyrics.export import export  # noqa: E402
from lyrics.extract.checkpoints import component_spec  # noqa: E402
from tests.config_file import write_test_config  # noqa: E402
from tests.models import save_untrained_stage2  # noqa: E402

pytestmark = pytest.mark.slow
FROZEN = ("clip", "ram", "gdino", "sam")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_test_config(tmp_path_factory.mktemp("lmms"))
    env = {**os.environ, "LYRICS_CONFIG": str(path)}
    subprocess.run([sys.executable, "-m", "lyrics.data.sample", "--if-missing"], env=env, check=True, capture_output=True)
    config = load_config(path)
    result = save_untrained_stage2(config)
    plan = EvalPlan.make(config, "sample-rec", model=result)
    [ours] = evaluate(plan, progress=False)  # extracts the sample first
    lines = (plan.out_dir(plan.results["test"]) / PREDICTIONS).read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    return config, result, ours, {p["id"]: p["prediction"] for p in predictions}


def test_lmms_eval_scores_the_export_as_make_eval_does(setup, tmp_path):
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    config, result, ours, predictions = setup
    exported = export(config, result.parent, tmp_path / "export")
    name = write_rec_task(config, "sample-rec", "test", tmp_path / "task")
    frozen = ",".join(f"{n}={component_spec(config, 'tiny', n).checkpoint}" for n in FROZEN)
    out = evaluator.simple_evaluate(
        model="lyrics", model_args=f"pretrained={exported},{frozen},batch_size=4", tasks=[name],
        task_manager=TaskManager(include_path=str(tmp_path / "task")), log_samples=True,
    )  # fmt: skip
    samples = out["samples"][name]
    assert len(samples) == ours["items"] == len(predictions) > 0
    for sample in samples:
        assert sample["filtered_resps"][0] == lmms_box_answer(predictions[sample["doc"]["question_id"]])
    assert out["results"][name]["refcoco_ACC@0.5,none"] * 100 == pytest.approx(ours["metrics"]["accuracy"])
