"""One module per `embedlake` sub-command: each defines `add_parser(subparsers)` and `run(args)`."""
