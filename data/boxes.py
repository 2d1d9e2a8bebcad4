"""Box conventions: the project uses [x1, y1, x2, y2] pixels; COCO files store [x, y, w, h]."""

Box = tuple[float, float, float, float]


def xywh_to_xyxy(box: Box) -> Box:
    x, y, width, height = box
    return (x, y, x + width, y + height)


def xyxy_to_xywh(box: Box) -> Box:
    x1, y1, x2, y2 = box
    return (x1, y1, x2 - x1, y2 - y1)
