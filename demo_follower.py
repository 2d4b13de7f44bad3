#!/usr/bin/env python3
"""A further node (default port 4001). It follows whichever node wins the election."""
import sys

from node_cli import main

if __name__ == "__main__":
    sys.exit(main(default_port=4001))
