"""The worker, as `python worker.py`: the same as `python -m app.worker`."""

from app.worker.__main__ import main

if __name__ == "__main__":
    main()
