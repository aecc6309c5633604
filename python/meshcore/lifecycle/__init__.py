"""Config lifecycle: history, rollback, verified change and process upgrade."""
