# stand-in: the OpenCLIP encoders in modules.py are not used by AnyDoor (its encoder is DINOv2)
