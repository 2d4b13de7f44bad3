"""Fault-injection ("nemesis") test suite for PickleDB Cluster.

Modules:
  history        JSON-lines operation history (invoke/complete times, outcome)
  linearizability  Wing-Gong / Porcupine-style per-key register checker
  checkers       lost-write, stale-read, convergence and one-leader-per-term checkers
  proxy          in-test TCP proxy placed on every directed node-to-node link
  schedule       seeded fault schedules (pure; printed on failure, replayable by seed)
  nemesis        executes a schedule against a running cluster
  workload       concurrent clients recording a history
  cluster        node processes (wraps tests/harness.py)
  campaign       one run = cluster + proxies + workload + nemesis + heal + checks;
                 also the CLI: python -m tests.nemesis.campaign --long --minutes 30
"""
