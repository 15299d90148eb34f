def rank_zero_only(f):  # stand-in: one process here
    return f
