"""COCO (pycocotools and TAM seg_label layouts) and GranDf datasets on small fixtures in the real formats."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusion_cam.evaluation import CocoDataset, DatasetError, GranDfDataset
from diffusion_cam.evaluation.words import group_words, match_names, singular_forms
from diffusion_cam.evaluation.coco_names import category_vocabulary

mask_utils = pytest.importorskip("pycocotools.mask")
# pycocotools' RLE decoder predates numpy 2's copy keyword; numpy warns about it on every decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

H, W = 40, 60
# two objects per image: a person box (rows 5-24, cols 5-24) and a dog triangle; image 2 has a traffic light
PERSON = [5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]
DOG = [30.0, 30.0, 55.0, 30.0, 55.0, 38.0]


def _write_images(folder, ids, pattern):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / pattern.format(i))


def _coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    light = np.zeros((H, W), np.uint8)
    light[2:12, 40:46] = 1
    rle = mask_utils.encode(np.asfortranarray(light))
    rle["counts"] = rle["counts"].decode("ascii")
    instances = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": H, "width": W},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": H, "width": W},
                   {"id": 99, "file_name": "COCO_val2014_000000000099.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "segmentation": [PERSON], "area": 400.0,
             "bbox": [5, 5, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 18, "segmentation": [DOG], "area": 100.0,
             "bbox": [30, 30, 25, 8], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 10, "segmentation": rle, "area": 60.0,
             "bbox": [40, 2, 6, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
                       {"id": 17, "name": "cat", "supercategory": "animal"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(instances))
    captions = {"annotations": [{"id": 5, "image_id": 42, "caption": "A man with his dog. "},
                                {"id": 9, "image_id": 42, "caption": "Second caption"}],
                "images": instances["images"]}
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(captions))
    _write_images(root / "val2014", [42, 7, 99], "COCO_val2014_{:012d}.jpg")
    return root


def test_coco_instances_layout_builds_category_masks_with_pycocotools(tmp_path):
    ds = CocoDataset(_coco_root(tmp_path))
    assert [it.id for it in ds.items] == ["coco:7", "coco:42"]  # 99 has no annotation: skipped
    item = ds.items[1]
    assert item.prompt == CocoDataset.PROMPT and item.reference == "A man with his dog."
    assert item.image().shape == (H, W, 3)
    masks = ds.category_masks(42)
    assert set(masks) == {1, 18}
    ys, xs = np.nonzero(masks[1])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 24, 5, 24)
    assert masks[18].sum() > 50 and not (masks[1] & masks[18]).any()
    assert ds.category_masks(7)[10].sum() == 60  # RLE (crowd) annotation decoded

    units = ds.units(item, ["A", " man", " and", " two", " dogs", " near", " a", " cat", "."])
    got = [(u.word, u.kind, u.tokens) for u in units]
    assert got == [("a", "function", [0]), ("man", "object", [1]), ("and", "function", [2]),
                   ("dogs", "object", [4]), ("a", "function", [6]), ("cat", "absent", [7])]
    np.testing.assert_array_equal(units[1].mask, masks[1])
    np.testing.assert_array_equal(units[3].mask, masks[18])


def test_coco_multiword_category_is_one_unit(tmp_path):
    ds = CocoDataset(_coco_root(tmp_path), limit=1)
    (item,) = ds.items
    units = ds.units(item, ["the", "traffic", "lights", "are", "red"])
    assert [(u.word, u.kind, u.tokens) for u in units] == [("the", "function", [0]),
                                                          ("traffic lights", "object", [1, 2])]


def test_tam_seg_label_layout(tmp_path):
    root = tmp_path / "tam"
    (root / "seg_label").mkdir(parents=True)
    label = np.zeros((H, W), np.uint8)
    label[0:10, 0:10] = 18  # dog
    label[20:30, 30:50] = 3  # car
    Image.fromarray(label).save(root / "seg_label" / f"{123:012d}.png")
    _write_images(root / "image", [123, 456], "{:012d}.jpg")  # 456 has no mask: skipped
    ds = CocoDataset(root)
    assert [it.id for it in ds.items] == ["coco:123"]
    units = ds.units(ds.items[0], ["a", "puppy", "and", "a", "car"])
    objects = {u.word: u.mask for u in units if u.kind == "object"}
    np.testing.assert_array_equal(objects["puppy"], label == 18)
    np.testing.assert_array_equal(objects["car"], label == 3)


def test_grandf_gcg_json_with_rle_masks(tmp_path):
    m1 = np.zeros((H, W), np.uint8)
    m1[5:15, 5:20] = 1
    m2 = np.zeros((H, W), np.uint8)
    m2[20:35, 30:50] = 1
    m3 = np.zeros((H, W), np.uint8)
    m3[20:25, 0:10] = 1

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}

    annos = [{"file_name": "sa_1.jpg", "height": H, "width": W,
              "caption": "A woman in a red coat walks two dogs.",
              "groundings": {"A woman in a red coat": {"token_positives": [0, 21], "rle_masks": [rle(m1)]},
                             "two dogs": {"token_positives": [28, 36], "rle_masks": [rle(m2), rle(m3)]}}}]
    path = tmp_path / "GranDf_HA_GCG_train.json"
    path.write_text(json.dumps(annos))
    _write_images(tmp_path / "images", [1], "sa_{}.jpg")
    ds = GranDfDataset(path, tmp_path / "images")
    (item,) = ds.items
    assert item.id == "grandf:sa_1.jpg" and item.reference.startswith("A woman")
    units = ds.units(item, ["a", "woman", "with", "a", "dog", "in", "red"])
    got = {u.word: (u.kind, u.mask) for u in units if u.kind == "object"}
    assert set(got) == {"woman", "dog", "red"}
    np.testing.assert_array_equal(got["woman"][1], m1.astype(bool))
    np.testing.assert_array_equal(got["red"][1], m1.astype(bool))
    np.testing.assert_array_equal(got["dog"][1], (m2 | m3).astype(bool))
    assert [u.word for u in units if u.kind == "function"] == ["a", "a"]


def test_grandf_reports_a_malformed_annotation(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"file_name": "x.jpg"}]))
    with pytest.raises(DatasetError, match="annotation 0 has no height, width, groundings"):
        GranDfDataset(path, tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        GranDfDataset(tmp_path / "missing.json", tmp_path)


def test_missing_coco_layout_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="neither annotations/instances_val2014.json nor seg_label"):
        CocoDataset(tmp_path)


def test_word_grouping_and_matching():
    assert group_words(["A", " hot", "dog", " on", " a", " plate", "."]) == [
        ("a", [0]), ("hotdog", [1, 2]), ("on", [3]), ("a", [4]), ("plate", [5])]
    assert group_words(["a", "red", "circle"]) == [("a", [0]), ("red", [1]), ("circle", [2])]
    vocab = category_vocabulary()
    words = ["people", "ride", "bikes", "past", "fire", "hydrants", "and", "a", "hotdog", "stand"]
    assert match_names(words, vocab) == ["person", None, "bicycle", None, "fire hydrant", "fire hydrant",
                                         None, None, "hot dog", None]
    assert "bus" in singular_forms("buses") and "knife" in singular_forms("knives")
