"""The summary of a ``-m`` sweep: each job's overrides and best monitored metric, as a table on
the console when the sweep ends and as ``<sweep>/summary.csv``.

Each job writes its row to ``<job>/job_result.json`` as it ends, in the process that ran it
(so it works with any launcher: local, joblib, SLURM); the sweep's end reads them back.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from llmprep.files import atomic_path, write_json_atomically
from llmprep.training.config import redact_text
from llmprep.training.report import print_table

RESULT_FILE = "job_result.json"
SUMMARY_FILE = "summary.csv"


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``) writing each sweep job's result and the
    sweep's summary. A job's ``best`` is what ``train`` returned: the best value of
    ``stage.monitor`` its checkpoint callback saw (empty when it never validated); a failed
    job's row says ``failed`` and why. Extra DDP ranks and single runs write nothing."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        completed = job_return.status == JobStatus.COMPLETED
        outcome = job_return._return_value
        row = {
            "job": hydra.job.num,
            "overrides": redact_text(" ".join(job_return.overrides or [])),
            config.stage.monitor: outcome if completed else None,
            "status": "completed" if completed else f"failed: {outcome}",
            "folder": hydra.runtime.output_dir,
        }
        write_json_atomically(Path(hydra.runtime.output_dir) / RESULT_FILE, row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sweep.glob(f"*/{RESULT_FILE}")]
        if not rows:
            return
        rows.sort(key=lambda row: row["job"])
        with atomic_path(sweep / SUMMARY_FILE) as temp, open(temp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print_table(
            f"sweep {sweep}", [{k: "" if v is None else v for k, v in r.items()} for r in rows]
        )
        print(f"sweep summary written to {sweep / SUMMARY_FILE}")
