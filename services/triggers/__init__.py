"""The triggers service."""
