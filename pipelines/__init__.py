"""embedlake pipelines: jobs that wire operators into Ray Data, and the `embedlake` command line."""
