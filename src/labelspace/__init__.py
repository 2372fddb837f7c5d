"""labelspace: multilabel image tagging with an image-conditioned label space.

The library (this package) holds the method, the data readers and the MLflow glue; it imports no
ZenML. `steps/` and `pipelines/` at the project root wrap it for ZenML.
"""

__version__ = "0.1.0"
