"""Record torchvision's own MobileNetV2 outputs on real photos, for ``tests/test_embed.py``.

CI cannot install torchvision (its PyPI wheels need a multi-GB CUDA torch), so the test that
proves the Keras conversion exact compares against this recording instead. Regenerate it where
torch and torchvision are importable (never in the same process as TensorFlow):

    pip install --target /tmp/tvsite torch==2.14.1 torchvision==0.29.1
    PYTHONPATH=/tmp/tvsite .venv/bin/python scripts/make_torchvision_reference.py

The photos come from scikit-image; torchvision does its own ImageNet preprocessing
(``Resize(256)``, ``CenterCrop(224)``, mean/std normalisation), so the recording also checks
``Embedder.preprocess``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from pipeline.backbones.mobilenet_v2 import weights_path

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
OUT = Path(__file__).parents[1] / "tests" / "data" / "torchvision_mobilenet_v2.npz"


def main() -> None:
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    model.eval()
    prepare = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    batch = torch.stack([prepare(Image.fromarray(getattr(skimage.data, p)())) for p in PHOTOS])
    with torch.no_grad():
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(batch), 1), 1)
        probabilities = torch.softmax(model.classifier(pooled), dim=1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        photos=np.array(PHOTOS),
        features=pooled.numpy(),
        probabilities=probabilities.numpy(),
        versions=np.array([torch.__version__, torchvision.__version__]),
    )
    top = probabilities.argmax(1).tolist()
    print(
        f"wrote {OUT} (torch {torch.__version__}, torchvision {torchvision.__version__}); "
        f"top-1 classes {dict(zip(PHOTOS, top, strict=True))}"
    )


if __name__ == "__main__":
    main()
