# stand-in: modules.py imports torchvision.transforms as T; the DINOv2 encoder does not use it
