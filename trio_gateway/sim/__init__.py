"""Fakes of every upstream, fault injection and the in-process harness."""
