"""Tiny control models (CMC): train a logit shift beside a frozen template, map it to any vocabulary, port it."""
