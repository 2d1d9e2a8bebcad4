"""The instruction templates of the paper's Table 10, as data, and a per-example template choice.

Every template starts with `<Image>`, where the soft visual tokens go (SPEC section 5). The paper's
placeholders are written in `str.format` style: {question}, {expression} (the paper's {Tag}),
{bbox} (a box in spatial text, `<Bbox>(x1,y1),(x2,y2)</Box>`), {object} (the paper's
{Tag & Bbox}) and {options}. Two deliberate departures, both because the paper's text cannot be
used as written:

- Grounded captioning: Table 10 asks about "the target object" without saying where its box goes,
  so the target's {bbox} is appended after the paper's sentence.
- Referring expression comprehension: Table 10 also lists "In the coordinate {Bbox} of the image,
  can you observe the object {Tag}." and "Confirm the presence of {Tag} in the bounding box {Bbox}
  in the image."; they put the answer (the box) into the prompt, so they are left out.

LLaVA-style conversations have no template: the paper keeps their own wording.
"""

import hashlib

IMAGE_TOKEN = "<Image>"

CAPTION = "caption"
VQA = "vqa"
TEXT_VQA = "text_vqa"
GROUNDED_CAPTION = "grounded_caption"
REC = "rec"
REFERENTIAL_DIALOGUE = "referential_dialogue"
MULTIPLE_CHOICE = "multiple_choice"

TEMPLATES: dict[str, tuple[str, ...]] = {
    CAPTION: (
        "<Image>Write a short description for the image.",
        "<Image>Write a description for the image.",
        "<Image>Provide a description of what is presented in the photo.",
        "<Image>Briefly describe the content of the image.",
        "<Image>Look at the image and describe what you see in a simple and clear manner.",
        "<Image>Could you use a few words to describe what you perceive in the photo?",
        "<Image>Please provide a short depiction of the picture.",
        "<Image>Summarize what this image depicts in a simple and concise manner.",
        "<Image>Provide a simple and clear description of the image, suitable for all audiences.",
    ),
    VQA: (
        "<Image>{question}",
        "<Image>Question: {question}",
        "<Image>Question: {question} Answer:",
        "<Image>Given the image, answer the following question: {question}",
        "<Image>With the aid of the following image, offer a straightforward, short response to: {question}.",
        "<Image>Based on the image, respond to this question with a short answer: {question}. Answer:",
        "<Image>Use the provided image to answer the question as short as possible: {question}",
        "<Image>What is the answer to the following question? {question}",
        "<Image>Refer to the information in the image to provide a minimalist answer to: {question}",
    ),
    TEXT_VQA: (
        "<Image>Question: {question}",
        "<Image>Question: {question} Answer:",
        "<Image>Analyze the textual content in this image and provide a short answer to: {question}.",
        "<Image>Look at the text in the image provided and succinctly answer: {question}.",
        "<Image>With the help of text in the following image, offer a simple, short response to: {question}.",
        "<Image>Refer to the textual data in the image to provide a brief answer to: {question}.",
    ),
    GROUNDED_CAPTION: (
        "<Image>Write a description for the target object in the image. {bbox}",
        "<Image>Provide a short caption focusing on the highlighted object in this image. {bbox}",
        "<Image>Describe the specific object indicated in the following image, keeping the description brief. {bbox}",
        "<Image>Explain what the object marked in the image is, using a concise description. {bbox}",
        "<Image>Identify and describe the key object in this image, using a short and clear description. {bbox}",
    ),
    REC: (
        "<Image>In the given image, could you find and tell me the coordinates of {expression}?",
        "<Image>Locate the {expression} in this image and provide a brief description of its position.",
        "<Image>Search for {expression} in the image and give its coordinates if found.",
        "<Image>Can you find the spatial location or coordinates of {expression} in the image shown here?",
    ),
    # No converter here makes referential dialogue yet (its data, GRIT / Shikra-RD, is not read).
    REFERENTIAL_DIALOGUE: (
        "<Image>Focus on the object {object} in the image, and answer the question: {question}.",
        "<Image>Could you provide a descriptive caption for the object {object} in the image?",
        "<Image>Regarding the object specified as {object}, please respond to: {question}.",
        "<Image>Explain the features or details of the object identified by {object} in the image.",
        "<Image>Create a caption that describes the area or object marked as {object} in the image.",
        "<Image>Refer to the object {object} in the image, and provide an answer to: {question}.",
    ),
    MULTIPLE_CHOICE: (
        "<Image>Question: {question} Options: {options}. Answer:",
        "<Image>For the question: {question}, choose the most suitable answer from options: {options}.",
        "<Image>Examine the image and answer the question: {question}. Your choices are: {options}.",
        "<Image>Respond to the question: {question} among options: {options}, select your response:",
        "<Image>Consider the question: {question} and options: {options}. Please provide your answer:",
    ),
}


def template_index(task: str, example_id: str) -> int:
    """The template of an example, fixed by its id: the same on every run, process and machine
    (a hash of the id, never Python's salted `hash` or a global random state)."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % len(TEMPLATES[task])


def render(task: str, example_id: str, **fields: str) -> str:
    """The example's prompt: its template with the placeholders filled in."""
    return TEMPLATES[task][template_index(task, example_id)].format(**fields)
