"""The per-job detail calls: a job's review result and its operation log, as `why`.

Shell: HTTP through the source's own client (signed, throttled, retried like the list call);
the answers are shaped by the pure `watcher.engine.why`.
"""

from __future__ import annotations

from typing import Any

from watcher.engine.why import AUDIT_RESULT, OP_LOGS, from_audit_result, from_op_logs
from watcher.metastudio.client import MetaStudioClient

# One page of the operation log holds every step of an ordinary job (about ten).
OP_LOG_PAGE = 100


async def fetch_why(client: MetaStudioClient, job_id: str, resource: str) -> dict[str, Any]:
    """Ask the detail API `resource` about one job; ApiError as the API answers."""
    if resource == AUDIT_RESULT:
        return from_audit_result(await client.get_job_resource(job_id, AUDIT_RESULT))
    if resource == OP_LOGS:
        body = await client.get_job_resource(
            job_id, OP_LOGS, [("limit", str(OP_LOG_PAGE)), ("offset", "0")]
        )
        count = body.get("count")
        if isinstance(count, int) and count > OP_LOG_PAGE:
            # The failing step is among the last: read the last page too.
            last = await client.get_job_resource(
                job_id, OP_LOGS, [("limit", str(OP_LOG_PAGE)), ("offset", str(count - OP_LOG_PAGE))]
            )
            body = {
                "operations": [*(body.get("operations") or []), *(last.get("operations") or [])]
            }
        return from_op_logs(body)
    raise ValueError(f"unknown detail resource {resource!r}")
