"""Flows for `scripts/bench --push`: a parent that fans out to child runs of a deployment with run_deployment."""
import asyncio
import time

from prefect import flow
from prefect.deployments import run_deployment


@flow
def child(seconds: float = 1) -> None:
    time.sleep(seconds)


@flow
async def fanout(deployment: str, children: int = 3, seconds: float = 1, poll_interval: float = 1) -> None:
    """Creates `children` runs of `deployment` at once and waits for all of them (each checked every
    `poll_interval` s, run_deployment's own wait); fails unless every one COMPLETED."""
    runs = await asyncio.gather(*(
        run_deployment(deployment, parameters={"seconds": seconds}, poll_interval=poll_interval)
        for _ in range(children)
    ))
    states = [run.state.type.value if run.state else "NONE" for run in runs]
    if any(state != "COMPLETED" for state in states):
        raise RuntimeError(f"children did not all complete: {states}")
