"""POST a human's answer to the sidecar, as another device would.

Usage: python post_answer.py SIDECAR_URL RUN_ID PATH ANSWER_JSON

Prints one JSON line: the HTTP status and the response body.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from urllib.parse import quote


def main(url: str, run_id: str, path: str, answer: str) -> None:
    body = json.dumps({"path": path, "answer": json.loads(answer)}).encode()
    request = urllib.request.Request(
        f"{url}/v1/runs/{quote(run_id, safe='')}/inputs",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    print(json.dumps({"status": status, "body": json.loads(text) if text else None}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
