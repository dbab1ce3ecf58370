"""A naive poller written with the official SDK, as a team would write it first: the baseline
the watcher is measured against (benchmark only; the SDK is the `bench` extra).

Every run lists every page one after the other with `list_voice_training_job`, compares each
job's state with the previous run's (a JSON file) and writes the new states back.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkmetastudio.v1 import ListVoiceTrainingJobRequest, MetaStudioClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--state-file", required=True)
    args = parser.parse_args()
    client = (
        MetaStudioClient.new_builder()
        .with_http_config(HttpConfig.get_default_config())
        .with_credentials(
            BasicCredentials(
                os.environ["CLOUD_SDK_AK"], os.environ["CLOUD_SDK_SK"], args.project_id
            )
        )
        .with_endpoints([args.endpoint])
        .build()
    )
    states: dict[str, str] = {}
    offset, count = 0, None
    while count is None or offset < count:
        page = client.list_voice_training_job(ListVoiceTrainingJobRequest(offset=offset, limit=100))
        count = page.count
        for job in page.jobs or []:
            states[job.job_id] = job.state
        offset += 100
    path = Path(args.state_file)
    before: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = sum(1 for job_id, state in states.items() if before.get(job_id) != state)
    path.write_text(json.dumps(states))
    print(json.dumps({"jobs": len(states), "changed": changed if before else None}))


if __name__ == "__main__":
    main()
