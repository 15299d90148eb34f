"""Ray Data operators of the batch stage (installed as `anyv2v_batch.operators`).

The stage reads WebDataset shards, decodes clips, runs the first-frame editor pool, the DDIM inversion
pool and the injected sampler pool, then encodes and writes shards plus Parquet; each step gets its
own module here as it is built.
"""
