"""The networks and what runs them: RB3D encoders and classifiers, their checkpoints,
augmentation on the device, the self-supervised objectives, devices and torchrun, the
linear probe.
"""
