"""The sample set's stage-2 instruction examples, made from its public-format files by the same
readers and converters a real run uses, so that the sample exercises that path end to end."""

from collections.abc import Mapping
from pathlib import Path

from lyrics.data.coco import read_coco_captions, read_karpathy_split
from lyrics.data.instructions import Instruction, from_coco_captions, from_llava, from_refcoco, from_vqa
from lyrics.data.llava import read_llava
from lyrics.data.refcoco import read_refcoco
from lyrics.data.sample import documents
from lyrics.data.vqa import read_vqa

SPLITS = ("train", "val", "test")


def sample_instructions(root: Path, sizes: Mapping[str, tuple[int, int]]) -> dict[str, list[Instruction]]:
    """The examples of every split, read from the build folder `root`; `sizes` maps join keys to
    (width, height), which RefCOCO boxes are normalised by. Each example goes to its image's
    Karpathy split; within a split the order is captions, VQA, RefCOCO, LLaVA, each in file order."""
    root = Path(root)
    image_dir = root / documents.IMAGE_FOLDER
    captioned = read_coco_captions(root / "coco" / "captions.json", image_dir)
    examples = [
        *from_coco_captions(captioned),
        *from_vqa(
            read_vqa(root / "vqa" / "questions.json", root / "vqa" / "annotations.json"),
            {image.image_id: image.file_path.stem for image in captioned},
        ),
        *from_refcoco(read_refcoco(root / "refcoco" / "refs(unc).json", root / "refcoco" / "instances.json"), sizes),
        *from_llava(read_llava(root / "llava" / "conversations.json", image_dir)),
    ]
    split_of = {
        image.file_path.stem: image.split for image in read_karpathy_split(root / "coco" / "dataset_coco.json", root)
    }
    by_split: dict[str, list[Instruction]] = {split: [] for split in SPLITS}
    for example in examples:
        by_split[split_of[example.image]].append(example)
    return by_split
