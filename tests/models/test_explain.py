import numpy as np
import pytest
import torch

from models.explain import GRID, Atlas, box_cells, explain_region
from models.geometry import FeatureGrid
from models.imageio import list_images


def _atlas(n: int, freq: list[float], loc: dict[int, float]) -> Atlas:
    loc_freq = torch.zeros(n, GRID, GRID)
    for j, v in loc.items():
        loc_freq[j] = v
    return Atlas(torch.tensor(freq), torch.ones(n), torch.full((n,), 2.0), loc_freq,
                 torch.zeros(n, 1, 4, 4, 3, dtype=torch.uint8))


def test_never_seen_latent_makes_a_novel_region():
    z = torch.zeros(4, 4, 3)
    z[1:3, 1:3, 0] = 1.0  # latent 0: never fires on good patches
    z[:, :, 1] = 0.5  # latent 1: everywhere, common
    err = torch.ones(4, 4)
    err[1:3, 1:3] = 4.0
    atlas = _atlas(3, [0.0, 0.5, 0.2], {1: 0.5, 2: 0.2})
    cells = np.array([[1, 1], [1, 2], [2, 1], [2, 2]])
    e = explain_region(z, err, cells, float(err.sum()), atlas, n_cells=4, box=(0, 0, 1, 1))
    assert e.kind == "novel" and e.novelty == pytest.approx(1.0 / 1.5)
    assert e.unusual[0].latent == 0 and e.unusual[0].never_seen
    assert e.error_share == pytest.approx(16 / 28)
    assert [j for j, _ in e.expected] == [1, 2]


def test_common_latent_in_the_wrong_place_is_misplaced():
    z = torch.zeros(4, 4, 2)
    z[0, 0, 0] = 1.0  # latent 0 is common on good parts, but never at this place
    atlas = _atlas(2, [0.3, 0.3], {1: 0.6})
    e = explain_region(z, torch.ones(4, 4), np.array([[0, 0]]), 16.0, atlas, n_cells=4, box=(0, 0, 1, 1))
    assert e.kind == "misplaced" and e.misplacement == pytest.approx(1.0) and e.novelty == 0.0
    assert e.expected[0] == (1, pytest.approx(0.6))


def test_box_cells_maps_work_pixels_to_feature_cells():
    cells = box_cells((16, 8, 16, 8), (0, 0, 64, 64), FeatureGrid(64, 8))
    assert sorted(map(tuple, cells)) == [(1, 2), (1, 3)]
    assert box_cells((0, 0, 1, 1), (0, 0, 64, 64), FeatureGrid(64, 8)).tolist() == [[0, 0]]


def test_detector_explains_the_injected_defect(detector, dataset):
    import cv2

    assert detector.atlas is not None and detector.atlas.crops.dtype == torch.uint8
    path = list_images(dataset / "test" / "spot")[0]
    image = detector.read(path)
    result, regions = detector.explain(image)
    inspected = detector.inspect([image])[0]
    np.testing.assert_array_equal(result.anomaly_map, inspected.anomaly_map)  # one scoring path
    assert result.score == inspected.score and result.regions == inspected.regions
    mask = cv2.imread(str(dataset / "ground_truth" / "spot" / f"{path.stem}_mask.png"), 0) > 0
    x, y, w, h = regions[0].box
    assert mask[y : y + h, x : x + w].any()  # the top region overlaps the defect
    assert 0 < regions[0].error_share <= 1 and regions[0].unusual


def test_atlas_survives_the_artifact_round_trip(detector, artifact):
    from models.detector import Detector

    loaded = Detector.from_artifact(artifact, "cpu")
    for k, v in detector.atlas.tensors().items():
        assert torch.equal(loaded.atlas.tensors()[k], v), k
