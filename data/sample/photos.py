"""The sample's photographs: files that PyPI packages ship, named `<package>:<path>`."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image


@dataclass(frozen=True)
class PackageData:
    distribution: str  # the name to `pip install`
    folder: str  # the data folder inside the installed package


PACKAGE_DATA = {
    "skimage": PackageData("scikit-image", "data"),
    "sklearn": PackageData("scikit-learn", "datasets/images"),
    "matplotlib": PackageData("matplotlib", "mpl-data/sample_data"),
    "imgaug": PackageData("imgaug", ""),
}


def split_source(source: str) -> tuple[str, PurePosixPath]:
    """`package:relative/path` -> (package, path); ValueError says what is wrong."""
    package, separator, path = source.partition(":")
    if not separator or not path:
        raise ValueError(f"source {source!r} is not of the form <package>:<path>")
    if package not in PACKAGE_DATA:
        known = ", ".join(PACKAGE_DATA)
        raise ValueError(f"source {source!r} names unknown package {package!r}; known: {known}")
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"source {source!r} must be a path inside the package's data folder")
    return package, relative


def resolve_source(source: str) -> Path:
    """The file of `source` inside the installed package."""
    package, relative = split_source(source)
    # find_spec locates the package without importing it (importing imgaug needs extra modules).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"photo {source!r} ships with the {package!r} package, which is not installed: "
            f"pip install {PACKAGE_DATA[package].distribution}"
        )
    path = Path(spec.submodule_search_locations[0], PACKAGE_DATA[package].folder, *relative.parts)
    if not path.is_file():
        raise FileNotFoundError(f"photo {source!r}: {path} is not in the installed {package!r} package")
    return path


def open_photo(source: str) -> Image.Image:
    """The photo as an RGB image of its stored size; transparency is flattened onto white."""
    with Image.open(resolve_source(source)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, "white")
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
