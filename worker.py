"""`python worker.py` from the project's root runs the worker program, apps/worker.py."""

import asyncio

from apps.worker import main

if __name__ == "__main__":
    asyncio.run(main())
