"""The feature classifier of the sample-quality metrics: training, features, and the safetensors cache."""

import json

import pytest
import torch
from safetensors import safe_open

import vaelab.eval.classifier as classifier_module
from vaelab.data.datasets import ImageDataset, Split
from vaelab.errors import VaelabError
from vaelab.eval.classifier import (
    ClassifierArchitecture,
    FeatureClassifier,
    dataset_fingerprint,
    load_or_train_classifier,
    train_classifier,
)


def two_class_images(n: int, seed: int, shape=(1, 8, 8)) -> Split:
    """Class 0 is bright on the left half, class 1 on the right half, both with uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, *shape, generator=generator) * 0.3
    half = shape[2] // 2
    images[labels == 0, :, :, :half] += 0.7
    images[labels == 1, :, :, half:] += 0.7
    return Split(images.clamp(0, 1), labels)


def tiny_dataset(name="two-halves", shape=(1, 8, 8)) -> ImageDataset:
    return ImageDataset(name, two_class_images(200, 0, shape), two_class_images(100, 1, shape),
                        class_names=["left", "right"])


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of train_classifier made through load_or_train_classifier."""
    calls = []
    real = classifier_module.train_classifier

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train_classifier", counting)
    return calls


def test_separable_classes_are_learnt_perfectly():
    classifier, accuracy = train_classifier(tiny_dataset(), epochs=3, seed=0)
    assert accuracy == 1.0
    test = tiny_dataset().test
    assert torch.equal(classifier.predict(test.images), test.labels)
    features = classifier.features(test.images, batch_size=7)  # uneven batches
    assert features.shape == (100, 128) and features.dtype == torch.float32 and not features.requires_grad
    assert (features >= 0).all()  # after the ReLU
    # features and logits agree with one unbatched forward pass in eval mode
    assert torch.allclose(classifier.logits(test.images, batch_size=7), classifier(test.images).detach(), atol=1e-5)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first, _ = train_classifier(tiny_dataset(), epochs=1, seed=5)
    after = torch.rand(3)
    second, _ = train_classifier(tiny_dataset(), epochs=1, seed=5)
    other, _ = train_classifier(tiny_dataset(), epochs=1, seed=6)
    assert torch.equal(before, after)
    x = tiny_dataset().test.images
    assert torch.equal(first.features(x), second.features(x))
    assert not torch.equal(first.features(x), other.features(x))


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 1), (1, 28, 28)])
def test_any_image_size(shape):
    classifier = FeatureClassifier(ClassifierArchitecture(shape, num_classes=4))
    x = torch.rand(6, *shape)
    assert classifier.features(x).shape == (6, 128)
    assert classifier.logits(x).shape == (6, 4)
    assert classifier.features(torch.rand(0, *shape)).shape == (0, 128)
    with pytest.raises(VaelabError, match="shape"):
        classifier.features(torch.rand(2, shape[0], shape[1] + 1, shape[2]))


def test_trains_on_colour_images_of_odd_size():
    classifier, accuracy = train_classifier(tiny_dataset(shape=(3, 5, 7)), epochs=2, batch_size=16)
    assert accuracy == 1.0 and classifier.features(torch.rand(2, 3, 5, 7)).shape == (2, 128)


def test_cache_round_trip_without_retraining(tmp_path, spy):
    dataset = tiny_dataset()
    first, info = load_or_train_classifier(dataset, tmp_path, epochs=2, seed=0)
    assert len(spy) == 1 and info["trained"]
    assert info["test_accuracy"] == 1.0 and info["epochs"] == 2 and info["seed"] == 0
    second, info2 = load_or_train_classifier(dataset, tmp_path, epochs=2, seed=0)
    assert len(spy) == 1 and not info2["trained"]  # loaded, not retrained
    assert info2["cache_path"] == info["cache_path"] and info2["test_accuracy"] == 1.0
    x = dataset.test.images
    assert torch.equal(first.features(x), second.features(x))
    assert torch.equal(first.logits(x), second.logits(x))
    # safetensors with the key in its metadata, and a JSON sidecar; nothing else (no pickle)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert [name.rsplit(".", 1)[1] for name in files] == ["json", "safetensors"]
    with safe_open(info["cache_path"], framework="pt") as f:
        assert f.metadata()["key"] == info["key"]
    sidecar = json.loads((tmp_path / files[0]).read_text())
    assert sidecar["test_accuracy"] == 1.0 and sidecar["training"]["seed"] == 0
    assert sidecar["architecture"] == {"image_shape": [1, 8, 8], "num_classes": 2, "channels": [16, 32],
                                       "hidden": 128, "dropout": 0.25, "batch_norm": True}
    # a corrupted weights file is retrained over, not trusted
    (tmp_path / files[1]).write_bytes(b"not safetensors")
    _, info3 = load_or_train_classifier(dataset, tmp_path, epochs=2, seed=0)
    assert info3["trained"] and len(spy) == 2


def test_changed_dataset_or_settings_get_a_new_key(tmp_path, spy):
    dataset = tiny_dataset()
    _, base = load_or_train_classifier(dataset, tmp_path, epochs=1)
    changed_pixel = tiny_dataset()
    changed_pixel.train.images[17, 0, 3, 4] += 1e-3
    changed_label = tiny_dataset()
    changed_label.train.labels[5] = 1 - changed_label.train.labels[5]
    renamed = tiny_dataset(name="other")
    keys = {base["key"]}
    for variant in (changed_pixel, changed_label, renamed):
        _, info = load_or_train_classifier(variant, tmp_path, epochs=1)
        assert info["trained"]
        keys.add(info["key"])
    _, other_seed = load_or_train_classifier(dataset, tmp_path, epochs=1, seed=1)
    keys.add(other_seed["key"])
    assert len(keys) == 5 and len(spy) == 5
    assert dataset_fingerprint(tiny_dataset()) == dataset_fingerprint(dataset)  # same data, same identity


def test_cache_follows_vaelab_cache(tmp_path, monkeypatch, spy):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    _, info = load_or_train_classifier(tiny_dataset(), epochs=1)
    assert info["cache_path"].startswith(str(tmp_path / "cache" / "classifiers"))
    _, again = load_or_train_classifier(tiny_dataset(), epochs=1)
    assert not again["trained"] and len(spy) == 1


def test_an_unwritable_cache_warns_and_still_returns_the_classifier(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not cache"):
        classifier, info = load_or_train_classifier(tiny_dataset(), blocker, epochs=1)
    assert info["trained"] and classifier.predict(tiny_dataset().test.images).shape == (100,)


def test_unlabelled_data_is_refused():
    dataset = ImageDataset("plain", Split(torch.rand(10, 1, 8, 8)), Split(torch.rand(4, 1, 8, 8)))
    with pytest.raises(VaelabError, match="no labels"):
        train_classifier(dataset, epochs=1)
