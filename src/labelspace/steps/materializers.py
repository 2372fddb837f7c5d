"""ZenML materializer for TrainedModel: the model bundle's plain files, never a pickled module."""

import os
import tempfile
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from labelspace.model.bundle import FILES, TrainedModel


class TrainedModelMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (TrainedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: type[Any]) -> TrainedModel:
        with tempfile.TemporaryDirectory() as tmp:
            for name in FILES:
                fileio.copy(os.path.join(self.uri, name), os.path.join(tmp, name))
            return TrainedModel.load(tmp)

    def save(self, data: TrainedModel) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            data.save(tmp)
            for name in FILES:
                fileio.copy(os.path.join(tmp, name), os.path.join(self.uri, name), overwrite=True)

    def extract_metadata(self, data: TrainedModel) -> dict[str, Any]:
        final = data.history[-1] if data.history else {}
        return {"head": data.head, "backbone": data.spec.backbone, "k": data.spec.k, "n_labels": len(data.labels),
                "epochs": len(data.history), "final_loss": float(final.get("loss", float("nan")))}
