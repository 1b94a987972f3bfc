"""Runnable examples (quickstart, a user-written model) and the idiom models the tests import."""
