"""The real photographs that ship inside scikit-image and scikit-learn, split by photo."""
from __future__ import annotations

import os
import shutil
from typing import Dict, List
from .errors import MissingInput

# Split by photo: the held-out photos never reach pre-training or fine-tuning. The two motorcycle
# photos are one stereo pair (one scene from two viewpoints: a quarter of the right one's tiles match
# the left one), so both are training photos: no held-out photo shares a scene with a training photo.
TRAIN = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
         "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "grass.png", "china.jpg", "camera.png", "cell.png",
         "coins.png", "moon.png"]
HELDOUT = ["retina.jpg", "brick.png", "gravel.png", "flower.jpg"]


def _folders() -> List[str]:
    out = []
    try:
        import skimage

        out.append(os.path.join(os.path.dirname(skimage.__file__), "data"))
    except ImportError:
        pass
    try:
        import sklearn

        out.append(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images"))
    except ImportError:
        pass
    return out


def photo_path(name: str) -> str:
    for folder in _folders():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise MissingInput(f"photo {name!r} not found in scikit-image / scikit-learn ({_folders()})")


def export_photos(dest: str) -> Dict[str, str]:
    """Copy the photos (bytes unchanged) to dest/train and dest/heldout; returns the two folders. A photo
    left in a folder by an older split (one that now belongs to the other side) is removed."""
    out = {}
    for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
        folder = os.path.join(dest, split)
        os.makedirs(folder, exist_ok=True)
        for stale in sorted(set(os.listdir(folder)) - set(names)):
            if stale in TRAIN or stale in HELDOUT:
                os.remove(os.path.join(folder, stale))
        for name in names:
            target = os.path.join(folder, name)
            if not os.path.exists(target):
                shutil.copyfile(photo_path(name), target)
        out[split] = folder
    return out
