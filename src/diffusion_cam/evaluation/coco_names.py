"""COCO instance categories (ids 1-90 as in the official annotation files) and caption synonyms."""

from __future__ import annotations

COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

#: caption words (singular) that name a category other than by its own name
SYNONYMS: dict[str, str] = {
    **{w: "person" for w in (
        "man", "woman", "boy", "girl", "child", "kid", "player", "guy", "lady", "baby", "skier", "surfer",
        "skateboarder", "snowboarder", "rider", "batter", "catcher", "pitcher", "adult", "teenager", "athlete",
        "tourist", "pedestrian", "gentleman", "toddler", "crowd", "chef", "officer", "cop", "soldier", "umpire")},
    "bike": "bicycle", "cycle": "bicycle", "motorbike": "motorcycle", "moped": "motorcycle",
    "plane": "airplane", "aeroplane": "airplane", "jet": "airplane", "aircraft": "airplane", "airliner": "airplane",
    "locomotive": "train", "lorry": "truck", "pickup": "truck", "ship": "boat", "sailboat": "boat",
    "canoe": "boat", "kayak": "boat", "yacht": "boat", "stoplight": "traffic light", "hydrant": "fire hydrant",
    "pigeon": "bird", "seagull": "bird", "gull": "bird", "duck": "bird", "goose": "bird", "parrot": "bird",
    "kitten": "cat", "kitty": "cat", "puppy": "dog", "pup": "dog", "pony": "horse", "foal": "horse",
    "lamb": "sheep", "cattle": "cow", "bull": "cow", "calf": "cow", "ox": "cow",
    "purse": "handbag", "necktie": "tie", "luggage": "suitcase", "ski": "skis", "ball": "sports ball",
    "football": "sports ball", "soccer ball": "sports ball", "tennis ball": "sports ball", "bat": "baseball bat",
    "glove": "baseball glove", "mitt": "baseball glove", "racket": "tennis racket", "racquet": "tennis racket",
    "mug": "cup", "hotdog": "hot dog", "doughnut": "donut", "sofa": "couch", "plant": "potted plant",
    "houseplant": "potted plant", "table": "dining table", "television": "tv", "monitor": "tv",
    "phone": "cell phone", "cellphone": "cell phone", "smartphone": "cell phone", "fridge": "refrigerator",
    "teddy": "teddy bear", "hairdryer": "hair drier", "dryer": "hair drier", "drier": "hair drier",
}


def category_vocabulary(names: dict[int, str] | None = None) -> dict[str, str]:
    """Phrase -> category name, for :func:`~diffusion_cam.evaluation.words.match_names`."""
    names = COCO_CATEGORIES if names is None else names
    vocab = {name.lower(): name for name in names.values()}
    known = set(names.values())
    vocab.update({w: c for w, c in SYNONYMS.items() if c in known and w not in vocab})
    return vocab
