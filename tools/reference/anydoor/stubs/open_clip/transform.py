def image_transform(*a, **k):
    raise NotImplementedError
