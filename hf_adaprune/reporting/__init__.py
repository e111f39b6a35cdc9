"""Counting (``flops``), timing (``latency``) and writing up (``report``) what pruning did."""
