"""The sample's annotations rendered in each public format (COCO captions, Karpathy split,
RefCOCO, VQAv2, LLaVA) as JSON-ready documents. Ids follow the YAML's order: image ids 1..N,
annotation ids 1..M over all objects, VQAv2-style question ids image_id * 1000 + n."""

import itertools
import re
from collections.abc import Iterator, Mapping

from lyrics.data.boxes import xyxy_to_xywh
from lyrics.data.sample.annotations import QuestionAnswer, SampleAnnotations, SampleImage, SampleObject

IMAGE_FOLDER = "images"
DETAIL_PROMPT = "<image>\nDescribe the image in detail."
_INFO = {"description": "Lyrics pipeline embedded sample data set", "version": "1.0"}

# A subset of the VQAv2 question types (the longest matching prefix wins), else VQAv2's fallback.
_QUESTION_TYPES = (
    "how many", "how many people are", "is the", "is this", "is this a", "is there", "is there a",
    "is it", "are", "are the", "are there", "does the", "what", "what is", "what is the",
    "what is in the", "what is on the", "what color is", "what color is the", "what color are the",
    "what kind of", "what type of", "what animal is", "what are the", "where is the", "who is",
    "why", "which",
)
_OTHER_QUESTION_TYPE = "none of the above"

Size = tuple[int, int]


def file_name(image: SampleImage) -> str:
    return f"{image.key}.jpg"


def tokenize(text: str) -> list[str]:
    """Lower-case words without punctuation, as the Karpathy and RefCOCO `tokens` fields."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def coco_captions(annotations: SampleAnnotations, sizes: Mapping[str, Size]) -> dict:
    captions = [
        (image_id, text)
        for image_id, image in _numbered(annotations.images)
        for text in image.captions
    ]
    return {
        "info": _INFO,
        "licenses": [],
        "images": _coco_images(annotations, sizes),
        "annotations": [
            {"id": caption_id, "image_id": image_id, "caption": caption}
            for caption_id, (image_id, caption) in enumerate(captions, start=1)
        ],
    }


def karpathy_split(annotations: SampleAnnotations) -> dict:
    images = []
    sentence_ids = itertools.count()
    for index, (image_id, image) in enumerate(_numbered(annotations.images)):
        sentences = [
            {"raw": caption, "tokens": tokenize(caption), "sentid": next(sentence_ids), "imgid": index}
            for caption in image.captions
        ]
        images.append(
            {
                "filepath": IMAGE_FOLDER,
                "filename": file_name(image),
                "cocoid": image_id,
                "imgid": index,
                "split": image.split,
                "sentences": sentences,
                "sentids": [sentence["sentid"] for sentence in sentences],
            }
        )
    return {"images": images, "dataset": "coco"}


def refcoco_instances(annotations: SampleAnnotations, sizes: Mapping[str, Size]) -> dict:
    categories = _category_ids(annotations)
    instances = []
    for ann_id, image_id, _, item in _numbered_objects(annotations):
        x, y, width, height = xyxy_to_xywh(item.box)
        x1, y1, x2, y2 = item.box
        instances.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": categories[item.label],
                "bbox": [x, y, width, height],
                "area": width * height,
                "iscrowd": 0,
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            }
        )
    return {
        "info": _INFO,
        "licenses": [],
        "images": _coco_images(annotations, sizes),
        "annotations": instances,
        "categories": [
            {"id": category_id, "name": label, "supercategory": label} for label, category_id in categories.items()
        ],
    }


def refcoco_refs(annotations: SampleAnnotations) -> list[dict]:
    """One ref per object (ref ids from 0, as upstream), its sentences from the object's refs."""
    categories = _category_ids(annotations)
    sentence_ids = itertools.count()
    refs = []
    for ref_id, (ann_id, image_id, image, item) in enumerate(_numbered_objects(annotations)):
        sentences = [_ref_sentence(raw, next(sentence_ids)) for raw in item.refs]
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": image_id,
                "split": image.split,
                "sentences": sentences,
                "sent_ids": [sentence["sent_id"] for sentence in sentences],
                "category_id": categories[item.label],
                # Upstream names the ref's crop after the image and the ref: COCO_..._<ref_id>.jpg
                "file_name": f"{image.key}_{ref_id}.jpg",
            }
        )
    return refs


def _ref_sentence(raw: str, sent_id: int) -> dict:
    tokens = tokenize(raw)
    return {"raw": raw, "sent": " ".join(tokens), "tokens": tokens, "sent_id": sent_id}


def vqa_questions(annotations: SampleAnnotations) -> dict:
    return {
        "info": _INFO,
        "license": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "sample",
        "questions": [
            {"question_id": question_id, "image_id": image_id, "question": qa.question}
            for question_id, image_id, qa in _numbered_questions(annotations)
        ],
    }


def vqa_annotations(annotations: SampleAnnotations) -> dict:
    return {
        "info": _INFO,
        "license": {},
        "data_type": "mscoco",
        "data_subtype": "sample",
        "annotations": [
            {
                "question_id": question_id,
                "image_id": image_id,
                "question_type": question_type(qa.question),
                "answer_type": qa.answer_type,
                "multiple_choice_answer": qa.multiple_choice_answer,
                "answers": [
                    {"answer": answer, "answer_confidence": "yes", "answer_id": answer_id}
                    for answer_id, answer in enumerate(qa.ten_answers, start=1)
                ],
            }
            for question_id, image_id, qa in _numbered_questions(annotations)
        ],
    }


def llava_conversations(annotations: SampleAnnotations) -> list[dict]:
    conversations = []
    for image in annotations.images:
        turns = [("human", DETAIL_PROMPT), ("gpt", image.detail)]
        for qa in image.qa:
            turns += [("human", qa.question), ("gpt", qa.multiple_choice_answer)]
        conversations.append(
            {
                "id": image.key,
                "image": file_name(image),
                "conversations": [{"from": speaker, "value": value} for speaker, value in turns],
            }
        )
    return conversations


def question_type(question: str) -> str:
    words = " ".join(tokenize(question))
    matches = [prefix for prefix in _QUESTION_TYPES if f"{words} ".startswith(f"{prefix} ")]
    return max(matches, key=len, default=_OTHER_QUESTION_TYPE)


def _numbered(images: tuple[SampleImage, ...]) -> Iterator[tuple[int, SampleImage]]:
    return enumerate(images, start=1)


def _numbered_objects(annotations: SampleAnnotations) -> Iterator[tuple[int, int, SampleImage, SampleObject]]:
    ann_ids = itertools.count(1)
    for image_id, image in _numbered(annotations.images):
        for item in image.objects:
            yield next(ann_ids), image_id, image, item


def _numbered_questions(annotations: SampleAnnotations) -> Iterator[tuple[int, int, QuestionAnswer]]:
    for image_id, image in _numbered(annotations.images):
        for index, qa in enumerate(image.qa):
            yield image_id * 1000 + index, image_id, qa


def _category_ids(annotations: SampleAnnotations) -> dict[str, int]:
    labels = sorted({item.label for image in annotations.images for item in image.objects})
    return {label: category_id for category_id, label in enumerate(labels, start=1)}


def _coco_images(annotations: SampleAnnotations, sizes: Mapping[str, Size]) -> list[dict]:
    return [
        {"id": image_id, "file_name": file_name(image), "width": width, "height": height}
        for image_id, image in _numbered(annotations.images)
        for width, height in [sizes[image.key]]
    ]
