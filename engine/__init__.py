"""Shared pieces of the execution engine: settings, identifiers, payload models."""
