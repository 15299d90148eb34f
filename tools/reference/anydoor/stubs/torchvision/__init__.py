# stand-in: imported by ldm modules, unused when sampling (the PyPI torchvision does not import beside torch 2.13)
