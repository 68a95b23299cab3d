"""Tests: fast by default; `slow` ones need the real bundled models."""
