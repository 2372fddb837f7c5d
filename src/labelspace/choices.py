"""The values of params.yaml's choice keys that the typed config checks and other modules implement,
one list each, in a module that imports nothing: labelspace.config reads params.yaml without torch
(over 2 s to import), so a bad value is reported at once, and the torch modules take the same lists.
"""

# model.backbone: labelspace.model.backbones registers exactly these (`@register_backbone`).
BACKBONES = ("alexnet", "efficientnet_lite0", "resnet18", "resnet50")

# model.open_words: how labelspace.model.networks measures words that are no training label.
OPEN_WORDS = ("raw", "absent", "standardized")

# ingest.labels: which labels labelspace.data.nuswide reads from a dataset in the NUS-WIDE layout.
LABEL_SETS = ("concepts", "nuswide-zsl")
