"""The programs that run in production: worker, HTTP API, CLI, codec server, Temporal set-up."""
