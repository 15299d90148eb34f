"""Jobs composed from `anyv2v_batch.operators`, with example job files (installed as `anyv2v_batch.pipelines`)."""
