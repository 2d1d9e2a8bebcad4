"""The sample's annotations rendered in each public format (COCO captions, Karpathy split,
RefCOCO, VQAv2, LLaVA, and the POPE, MME and ScienceQA evaluation files) as JSON-ready documents.
Ids follow the YAML's order: image ids 1..N, annotation ids 1..M over all objects, VQAv2-style
question ids image_id * 1000 + n. Where a format wants a random choice, a hash of a fixed salt and
the item decides, so that a rebuild is byte-identical on every Python version."""

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

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

POPE_SETTINGS = ("random", "popular", "adversarial")
POPE_TEMPLATE = "Is there a {} in the image?"  # POPE's own, "a" before every name included
MME_SUFFIX = " Please answer yes or no."
SCIENCEQA_IMAGE = "image.png"  # ScienceQA's one file name, under <split>/<pid>/
SCIENCEQA_SPLIT = "test"
SCIENCEQA_DISTRACTORS = 3
_YES_NO = ("yes", "no")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

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


def pope_questions(annotations: SampleAnnotations) -> dict[str, list[dict]]:
    """POPE's three settings, each a list of its JSONL records. POPE samples 500 COCO val images;
    the sample is too small for a split, so every image is asked. Per image each distinct
    annotated label is asked with label "yes", alternating with as many absent labels with "no":
    `random` draws them (by hash) from the other images' labels, `popular` takes the labels on the
    most images, `adversarial` those on the most images together with this image's labels (only
    labels that do co-occur). When there are fewer absent labels than present ones, only as many
    present ones are asked, so that every image stays balanced. Labels the image lists as
    `unboxed` are never asked as absent."""
    labels = {image.key: _labels(image) for image in annotations.images}
    images_with = Counter(label for present in labels.values() for label in present)
    settings: dict[str, list[dict]] = {setting: [] for setting in POPE_SETTINGS}
    for image in annotations.images:
        present = labels[image.key]
        absent = _absent_labels(image, images_with)
        together: Counter[str] = Counter()  # label -> this image's labels on the images it is on
        for other in annotations.images:
            if other.key != image.key:
                shared = len(set(present) & set(labels[other.key]))
                together.update({label: shared for label in labels[other.key]})
        ranked = {
            "random": _hash_order(f"pope-random:{image.key}", absent),
            "popular": sorted(absent, key=lambda label: (-images_with[label], label)),
            "adversarial": sorted(
                (label for label in absent if together[label]), key=lambda label: (-together[label], label)
            ),
        }
        for setting, negatives in ranked.items():
            for positive, negative in zip(present, negatives):
                for label, answer in ((positive, "yes"), (negative, "no")):
                    records = settings[setting]
                    records.append(
                        {
                            "question_id": len(records) + 1,
                            "image": file_name(image),
                            "text": POPE_TEMPLATE.format(label),
                            "label": answer,
                        }
                    )
    return settings


def mme_questions(annotations: SampleAnnotations) -> list[dict]:
    """MME-style records: per subtask and image one question answered "Yes" and one "No", the pair
    MME scores together. `existence` asks the first annotated label and an absent one (by hash);
    `count` asks the label with the most boxes (not `unboxed`, not a plural name such as "trees"
    whose one box holds many) at its box count and at one more. MME's `position` and `color` are
    left out: the annotations hold no relations between objects, and a "No" colour cannot be
    chosen safely (a tabby cat's green eyes have black pupils)."""
    images_with = Counter(label for image in annotations.images for label in _labels(image))
    records = []
    for image in annotations.images:
        absent = _hash_order(f"mme-existence:{image.key}", _absent_labels(image, images_with))
        if image.objects and absent:
            records += _mme_pair("existence", image, _there_is(image.objects[0].label), _there_is(absent[0]))
    for image in annotations.images:
        boxes = Counter(item.label for item in image.objects)
        countable = [label for label in boxes if label not in image.unboxed and not _is_plural(label)]
        if countable:
            label = max(countable, key=boxes.__getitem__)  # the first of the most boxed
            count = boxes[label]
            records += _mme_pair("count", image, _there_are(count, label), _there_are(count + 1, label))
    return records


def scienceqa_problems(annotations: SampleAnnotations) -> dict[str, dict]:
    """The VQA questions as ScienceQA's `problems.json` (problem id -> problem). Choices are the
    majority answer and up to three other questions' majority answers of the same answer type
    that none of this question's annotators gave ("yes", "no" for yes/no questions), the majority
    answer's place chosen by a hash of the problem id. Every problem is in split "test", the one
    ScienceQA is evaluated on; a question with no possible distractor is left out (ScienceQA needs
    two choices)."""
    return {pid: problem for pid, _, problem in _scienceqa(annotations)}


def scienceqa_images(annotations: SampleAnnotations) -> dict[str, str]:
    """Problem id -> image key. ScienceQA stores each image as <split>/<pid>/image.png and joins on
    the problem id; the sample's images are `images/<key>.jpg`, so this side file says which one a
    problem shows instead of copying photos or adding a field to ScienceQA's layout."""
    return {pid: key for pid, key, _ in _scienceqa(annotations)}


def _scienceqa(annotations: SampleAnnotations) -> Iterator[tuple[str, str, dict]]:
    majorities: dict[str, dict[str, None]] = {}  # answer type -> majority answers, in YAML order
    for image in annotations.images:
        for qa in image.qa:
            majorities.setdefault(qa.answer_type, {})[qa.multiple_choice_answer] = None
    for image in annotations.images:
        for n, qa in enumerate(image.qa):
            pid = f"{image.key}-{n}"
            correct = qa.multiple_choice_answer
            if qa.answer_type == "yes/no" and correct in _YES_NO:
                choices = list(_YES_NO)
            else:
                pool = [answer for answer in majorities[qa.answer_type] if answer not in qa.answers]
                distractors = _hash_order(f"scienceqa:{pid}", pool)[:SCIENCEQA_DISTRACTORS]
                if not distractors:
                    continue
                place = _hash_rank(f"scienceqa-answer:{pid}", correct) % (len(distractors) + 1)
                choices = [*distractors[:place], correct, *distractors[place:]]
            problem = {
                "question": qa.question,
                "choices": choices,
                "answer": choices.index(correct),
                "hint": "",
                "image": SCIENCEQA_IMAGE,
                "split": SCIENCEQA_SPLIT,
            }
            yield pid, image.key, problem


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


def _labels(image: SampleImage) -> list[str]:
    """The image's distinct object labels, in YAML order."""
    return list(dict.fromkeys(item.label for item in image.objects))


def _absent_labels(image: SampleImage, vocabulary: Iterable[str]) -> list[str]:
    """Labels of the sample that `image` neither has boxed nor lists as `unboxed`, sorted."""
    return sorted(set(vocabulary) - set(_labels(image)) - set(image.unboxed))


def _hash_rank(salt: str, item: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}\0{item}".encode()).digest()[:8], "big")


def _hash_order(salt: str, items: Iterable[str]) -> list[str]:
    """`items` shuffled by hash: a fixed, seed-like order that no Python version changes."""
    return sorted(items, key=lambda item: (_hash_rank(salt, item), item))


def _mme_pair(subtask: str, image: SampleImage, yes: str, no: str) -> list[dict]:
    return [
        {"subtask": subtask, "image": file_name(image), "question": question + MME_SUFFIX, "answer": answer}
        for question, answer in ((yes, "Yes"), (no, "No"))
    ]


def _there_is(label: str) -> str:
    if _is_plural(label):
        return f"Are there {label} in this image?"
    article = "an" if label[0] in "aeiou" else "a"
    return f"Is there {article} {label} in this image?"


def _there_are(count: int, label: str) -> str:
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    if count == 1:
        return f"Is there {number} {label} in this image?"
    return f"Are there {number} {_plural(label)} in this image?"


def _is_plural(label: str) -> bool:
    """Whether a label names a group ("trees", "glasses"): an English plural ending in s."""
    return label.endswith("s") and not label.endswith(("ss", "us", "is"))


def _plural(label: str) -> str:
    if label.endswith("man"):
        return f"{label[:-3]}men"
    if label.endswith(("s", "x", "ch", "sh")):
        return f"{label}es"
    if label.endswith("y") and label[-2:-1] not in tuple("aeiou"):
        return f"{label[:-1]}ies"
    return f"{label}s"
