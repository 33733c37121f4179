"""Malformed inputs: objects that break pickling at each stage, damaged stores, bad command
lines, and bounded fuzzing of the parsers that read stored bytes."""
