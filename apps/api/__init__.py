"""The HTTP API (`uvicorn apps.api.main:app`): one router per resource under routers/."""
