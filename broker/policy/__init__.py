"""Matching a verified caller to one identity, and deciding what it may be issued."""
