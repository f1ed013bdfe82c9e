"""`ray job submit` as a careful user's script runs it against a head that has just started.

    result = submit_job(["ray", "job", "submit", "--address", url, "--", *entrypoint], env=env, timeout=400)

Until the head's job agent is up (seconds after `ray start --head`, longer on a busy machine), the head
answers every submission with "No available agent to submit job, please try again later" and runs
nothing; so that answer is retried until a deadline, and anything else is returned to the test.
"""

import subprocess
import time

AGENT_NOT_READY = "No available agent to submit job"


def submit_job(command: list[str], *, env: dict, timeout: float, agent_deadline: float = 180,
               retry_seconds: float = 2) -> subprocess.CompletedProcess:
    """Run a `ray job submit ...` command line; retry it while the head has no job agent yet."""
    give_up = time.monotonic() + agent_deadline
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or AGENT_NOT_READY not in result.stdout + result.stderr:
            return result
        if time.monotonic() + retry_seconds > give_up:
            raise AssertionError(f"the Ray head had no job agent {agent_deadline:g} s after the first submission; "
                                 f"its last answer:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        time.sleep(retry_seconds)
