"""`python -m app.worker`: load ResNet50 once, then classify jobs from Redis until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace

from app import db
from app.jobs.protocol import connect
from app.settings import Settings, get_settings
from app.worker.backends import load_chosen
from app.worker.batching import worker_batch_size
from app.worker.classifier import ModelLoadError
from app.worker.loop import Wedged, Worker

# The worker's exit status when an inference hung (BATCH_TIMEOUT); `make run` starts a new worker then.
WEDGED_EXIT = 3


async def serve(settings: Settings) -> None:
    try:
        # INFERENCE_BACKEND's, or with auto the fastest that agrees with TensorFlow (logged, and in heartbeats)
        classifier, choice = load_chosen(settings)
    except ModelLoadError as exc:
        logging.getLogger("app.worker").error("%s", exc)
        sys.exit(2)
    settings = replace(settings, max_batch=worker_batch_size(classifier, settings))  # MAX_BATCH=0: timed now
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Stop taking jobs; the batch in hand is finished and acknowledged before exit.
        loop.add_signal_handler(signum, stop.set)
    await db.init_db(settings.database_url)
    redis = connect(settings.redis_url)
    wedged = False
    try:
        await Worker(redis, classifier, settings, choice=choice.summary).run(stop)
    except Wedged as exc:
        logging.getLogger("app.worker").error("%s: exiting, for a new worker process to take over", exc)
        wedged = True
    finally:
        await redis.aclose()
        await db.close_db()
    if wedged:  # at once: a normal exit would wait for the hung inference thread
        os._exit(WEDGED_EXIT)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if not settings.redis_url:
        sys.exit("REDIS_URL is not set: the worker needs the Redis server the web app uses")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
