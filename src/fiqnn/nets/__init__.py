"""The networks a user brings: the registry of teacher architectures (``models``) and the
torch.fx import that turns any supported BN CNN into fiqnn's units (``fximport``)."""
