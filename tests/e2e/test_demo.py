"""`flowpoint demo` against a real sidecar process: killed mid-run, resumed, nothing repeated."""

import asyncio
import os
import sys


async def test_demo_kills_and_resumes_without_repeating_work(sidecar_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowpoint_cli",
        "demo",
        "--sidecar",
        sidecar_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "killed with SIGKILL" in text
    assert "skipped ['fetch_ticket', 'classify', 'draft_reply']" in text
    assert "re-executed completed nodes: none" in text
    assert "status completed" in text
