"""embedlake operators: plain Python building blocks (encoders, sources, sinks, search, clustering, dedup).

Every operator transforms a pyarrow / numpy batch and knows nothing of how it is scheduled; the
`pipelines` package composes them with Ray Data.
"""
