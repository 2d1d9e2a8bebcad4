"""The sample's photographs: files that PyPI packages ship, named `<package>:<path>`."""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from lyrics.extract.images import to_rgb
from lyrics.packages import package_dir


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
    root = package_dir(package)  # importing imgaug would need modules it does not install
    if root is None:
        raise ModuleNotFoundError(
            f"photo {source!r} ships with the {package!r} package, which is not installed: "
            f"pip install {PACKAGE_DATA[package].distribution}"
        )
    path = Path(root, PACKAGE_DATA[package].folder, *relative.parts)
    if not path.is_file():
        raise FileNotFoundError(f"photo {source!r}: {path} is not in the installed {package!r} package")
    return path


def open_photo(source: str) -> Image.Image:
    """The photo as an RGB image of its stored size; transparency is flattened onto white."""
    with Image.open(resolve_source(source)) as image:
        image.load()
        return to_rgb(image)
