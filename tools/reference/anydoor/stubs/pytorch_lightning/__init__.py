# stand-in: ldm's LatentDiffusion subclasses LightningModule; sampling needs only nn.Module and .device
import torch


class LightningModule(torch.nn.Module):
    @property
    def device(self):
        return next(self.parameters()).device
