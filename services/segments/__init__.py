"""The segments service."""
