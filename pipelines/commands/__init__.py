"""One module per `embedlake` sub-command: each defines `add_parser(subparsers)` and `run(args)`.

`add_parser` declares the options, each named for a field of the command's job dataclass
(pipelines/<job>.py), with `job="module:Class"` so the job's own defaults apply; `run` builds the job
with `options.job_from_args` and runs it (importing the job only then, so one command never loads
another's heavy modules).
"""
