"""Every Redis key and channel name. The web app and the worker import them from here only."""

from __future__ import annotations

# Sorted set: user id -> when they last enqueued an interactive job. Their streams are read first.
JOB_USERS = "jobs:users"
# Set of user ids whose interactive stream holds jobs (waiting or in flight): put there with each job, dropped
# by the reader that finds the stream empty, so reads never look at every quiet user's stream.
JOBS_WAITING = "jobs:waiting"
BULK_USERS = "bulk:users"  # set of user ids with bulk work waiting in their own stream
WORKERS_GROUP = "workers"  # the consumer group every worker joins
DEAD_JOBS = "jobs:dead"  # stream of jobs that failed MAX_DELIVERIES times
RESULTS = "results"  # pub/sub channel: one message per finished job
WORKER_PREFIX = "worker:"  # heartbeats: worker:<name> -> JSON stats, with a TTL
# Sorted set of worker names scored by when their heartbeat expires: live workers are found without
# scanning the keyspace.
WORKER_NAMES = "workers:live"
REQUEUE_LOCK = "lock:requeue"  # one web process at a time looks for stale predictions
FEED_LOCK = "lock:feed"  # one web process at a time feeds waiting work onto the bulk streams
# Uploads answered with an earlier result of the same image, for /metrics (a user is not told: it would
# say what others sent).
CACHE_HITS = "stats:cache_hits"


def jobs(user_id: int | str) -> str:
    """One interactive stream per user: workers take from each in turn, so no one user's uploads crowd
    out another's."""
    return f"jobs:user:{user_id}"


def bulk_jobs(user_id: int | str) -> str:
    """One bulk stream per user: workers take a share from each, so no one user starves the rest."""
    return f"jobs:bulk:{user_id}"


def reading_lock(collection_id: str) -> str:
    """Held by the web process reading a collection's archive; another takes over if it lapses."""
    return f"lock:reading:{collection_id}"


def collection_start(user_id: int | str) -> str:
    """Held while one person's collection is checked against their quotas, stored and created."""
    return f"lock:collection-start:{user_id}"


def queued_marker(prediction_id: str) -> str:
    """Set with the job, deleted with its acknowledgement: a queued prediction without one has lost its
    job (Redis restarted) and is enqueued again."""
    return f"queued:{prediction_id}"


def heartbeat(worker_name: str) -> str:
    return f"{WORKER_PREFIX}{worker_name}"


def login_throttle_account(email: str) -> str:
    """Failed sign-ins to an account from every address together."""
    return f"throttle:login:account:{email.lower()}"


# The two below name an account and an address (app/throttles.py address_key), the address first: an IP
# address or /64, the server's to know, never begins another followed by ":", so no two pairs make one key.
def login_throttle_account_address(email: str, address: str) -> str:
    """Failed sign-ins to an account from one address."""
    return f"throttle:login:account-addr:{address}:{email.lower()}"


def sign_ins_account_address(email: str, address: str) -> str:
    """Sign-ins of any outcome to an account from one address."""
    return f"throttle:sign-ins:account-addr:{address}:{email.lower()}"


def sign_ins_address(address: str) -> str:
    """Sign-ins of any outcome, to any account, from one address."""
    return f"throttle:sign-ins:addr:{address}"


def login_throttle_address(address: str) -> str:
    return f"throttle:login:addr:{address}"


def in_flight(counter: str) -> str:
    """Attempts begun and not yet judged, of a counter of failures (app/throttles.py), each with its deadline (a
    sorted set): a prefix of their own, as an email may end in anything and so name another counter. Not the
    prefix of 6be07fc's counter of them, another type."""
    return f"throttle:in-flight-attempts:{counter}"


def register_throttle_address(address: str) -> str:
    return f"throttle:register:addr:{address}"


def revoked_token(jti: str) -> str:
    return f"revoked:{jti}"
