#!/usr/bin/env python3
"""Node 4000, the "main" node of the seed README. It is only favoured to win the first
election (its first election timeout is shorter); it is never made leader by fiat."""
import sys

from node_cli import main

if __name__ == "__main__":
    sys.exit(main(default_port=4000, first_election_factor=0.5))
