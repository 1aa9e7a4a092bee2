"""The operator's command line, `engine`: one module per command group, `main` parses and runs."""
