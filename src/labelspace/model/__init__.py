"""The model: backbones, the label-space and BCE networks, the model spec and the on-disk bundle."""
