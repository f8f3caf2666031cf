"""The workflows service."""
