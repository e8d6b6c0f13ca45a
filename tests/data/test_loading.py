import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from cbam.data.loading import AugmentedDataset, DataError, ShardSampler, Skipped, collate_skipping, open_split


def test_cifar_is_never_downloaded_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("CBAM_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="pass --download"):
        open_split("cifar10", "train")


def test_unknown_dataset_names_and_splits_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'; did you mean cifar10"):
        open_split("cifar11", "train")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        open_split("cifar10", "valid")


class Colours(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        if index == 3:
            raise OSError("image file is truncated")
        ramp = torch.arange(400, dtype=torch.uint8).view(20, 20) + index  # every crop looks different
        return Image.fromarray(ramp.numpy()).convert("RGB"), index % 2


def test_augmentation_depends_only_on_seed_epoch_and_index():
    augment = v2.Compose([v2.RandomResizedCrop(8, scale=(0.2, 1.0)), v2.ToImage(), v2.ToDtype(torch.float32)])
    a, b = AugmentedDataset(Colours(), augment, seed=1), AugmentedDataset(Colours(), augment, seed=1)
    torch.manual_seed(123)
    first = a[2][0]
    torch.manual_seed(456)  # the global RNG does not matter ...
    assert torch.equal(first, b[2][0])
    assert not torch.equal(a[4][0], b[2][0])  # ... the index does
    b.set_epoch(1)  # ... and the epoch does
    assert not torch.equal(first, b[2][0])


def test_unreadable_samples_become_skipped_and_collate_drops_them():
    dataset = AugmentedDataset(Colours(), v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32)]))
    item = dataset[3]
    assert isinstance(item, Skipped) and "truncated" in item.reason
    images, targets, skipped = collate_skipping([dataset[i] for i in range(6)])
    assert images.shape == (5, 3, 20, 20) and targets.tolist() == [0, 1, 0, 0, 1] and len(skipped) == 1


def test_shard_sampler_covers_every_index_once_without_padding():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(ShardSampler(10, rank, 3)) for rank in range(3)] == [4, 3, 3]
