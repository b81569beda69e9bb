"""The real photographs that ship inside scikit-image and scikit-learn, split by photo, and the camera
photographs that Debian's opencv-doc and palapeli-data ship (DFSG-free, Debian main; `make demo`
installs them), which only the probe and the other-camera benchmark read."""
from __future__ import annotations

import glob
import os
import shutil
from typing import Dict, List, Tuple
from .errors import MissingInput
from .files import atomic_write

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


# Camera photographs among opencv-doc's sample data (no drawings, renders, scans of text or paintings) and
# palapeli-data's puzzle photos. Other cameras than the 18 above: benchmarks/source_shift.py makes its
# reals and fakes from them, and the demo's probe reads them beside the 4 held-out photos.
OPENCV = "/usr/share/doc/opencv-doc/examples/data"
PALAPELI = "/usr/share/palapeli/collection"
OPENCV_PHOTOS = ("aero1.jpg aero3.jpg aloeL.jpg aloeR.jpg apple.jpg baboon.jpg building.jpg butterfly.jpg fruits.jpg "
                 "home.jpg leuvenA.jpg leuvenB.jpg messi5.jpg orange.jpg squirrel_cls.jpg stuff.jpg basketball1.png "
                 "graf1.png box_in_scene.png left01.jpg right05.jpg").split()
DEBIAN_PACKAGES = "opencv-doc palapeli-data"
# the second view of a scene already in the list (stereo pairs, the same street, the same calibration
# board): a probe that holds out one photo must not fit on its twin
TWINS = {"aloeR.jpg", "leuvenB.jpg", "right05.jpg"}


def debian_photos(opencv: str = OPENCV, palapeli: str = PALAPELI) -> List[str]:
    """The other-camera photos installed on this machine (none when the packages are not)."""
    paths = [os.path.join(opencv, n) for n in OPENCV_PHOTOS] + sorted(glob.glob(os.path.join(palapeli, "*.jpg")))
    return [p for p in paths if os.path.isfile(p)]


def missing_debian_photos(opencv: str = OPENCV, palapeli: str = PALAPELI) -> List[str]:
    """What of the Debian photos is not installed: every listed opencv-doc photo that is absent, and
    palapeli-data when its collection holds no photo."""
    missing = [n for n in OPENCV_PHOTOS if not os.path.isfile(os.path.join(opencv, n))]
    if not glob.glob(os.path.join(palapeli, "*.jpg")):
        missing.append("palapeli-data's photos")
    return missing


def export_probe_photos(dest: str, opencv: str = OPENCV, palapeli: str = PALAPELI) -> Tuple[str, int]:
    """dest/probe: the held-out photos and the installed Debian photos but the twins (bytes unchanged;
    copied once). Returns the folder and how many Debian photos it holds (0: the packages are not
    installed, and the probe reads the held-out photos alone; missing_debian_photos says what is absent).
    A file no longer among them is removed, so an uninstalled package does not leave its photos behind."""
    folder = os.path.join(dest, "probe")
    os.makedirs(folder, exist_ok=True)
    sources = {n: photo_path(n) for n in HELDOUT}
    debian = [p for p in debian_photos(opencv, palapeli) if os.path.basename(p) not in TWINS]
    sources.update((os.path.basename(p), p) for p in debian)
    for stale in sorted(set(os.listdir(folder)) - set(sources)):
        os.remove(os.path.join(folder, stale))
    for name, src in sources.items():
        target = os.path.join(folder, name)
        if not os.path.exists(target):
            with open(src, "rb") as f:
                atomic_write(target, lambda out: shutil.copyfileobj(f, out))
    return folder, len(debian)
