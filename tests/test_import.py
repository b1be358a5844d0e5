"""`edgeprune import`: a model trained elsewhere becomes a run folder measured on the user's images."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edgeprune.cli import main
from edgeprune.errors import InputError, OutputExistsError, RunError
from edgeprune.training.importer import ImportConfig, head_classes, import_run
from edgeprune.training.models import build_model
from edgeprune.training.runs import load_run
from image_folder import write_image_folder, write_train_val

TV_MODEL = "tv:mobilenet_v3_small"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_train_val(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """A torchvision model 'trained elsewhere' (random weights, 3 classes), saved as a state_dict."""
    torch.manual_seed(1)
    model = build_model(TV_MODEL, num_classes=3, input_shape=(3, 32, 32))
    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(model.state_dict(), path)
    return path


def _config(tmp_path, weights, images, **overrides):
    values = dict(model=TV_MODEL, weights=str(weights), data=f"folder:{images}", run_dir=tmp_path / "runs" / "mine",
                  input_size=32)
    values.update(overrides)
    return ImportConfig(**values)


def test_import_writes_a_run_whose_accuracy_is_the_users_model_measured(tmp_path, tv_weights, images):
    result = import_run(_config(tmp_path, tv_weights, images))
    run = load_run(tmp_path / "runs" / "mine")
    assert run.spec.model == TV_MODEL and run.spec.num_classes == 3
    assert run.spec.class_names == ("cat", "dog", "fox")
    assert run.metrics["dense"]["test_accuracy"] == result.accuracy.accuracy
    assert run.metrics["dense"]["test_n"] == 12  # the val folder: 3 classes x 4 images
    saved = torch.load(tv_weights, weights_only=True)
    assert all(torch.equal(run.model.state_dict()[k], saved[k]) for k in saved)
    assert run.spec.imported["format"] == "torch" and len(run.spec.imported["sha256"]) == 64
    assert run.spec.preprocess["input_size"] == 32 and run.spec.input_shape == (3, 32, 32)


def test_preprocessing_comes_from_the_architectures_published_weights_unless_flags_say_otherwise(
        tmp_path, tv_weights, images):
    result = import_run(_config(tmp_path, tv_weights, images, input_size=None, test_size=2, train_size=2))
    assert (result.preprocess.input_size, result.preprocess.resize_size) == (224, 256)  # torchvision's DEFAULT
    assert result.preprocess.source == "weights"
    flagged = import_run(_config(tmp_path, tv_weights, images, run_dir=tmp_path / "r2", mean=(0.5, 0.5, 0.5),
                                 std=(0.25, 0.25, 0.25)))
    assert flagged.preprocess.mean == (0.5, 0.5, 0.5) and flagged.preprocess.source == "flags"
    assert load_run(tmp_path / "r2").spec.std == (0.25, 0.25, 0.25)


def test_the_head_size_is_read_from_the_weights(tv_weights):
    state = torch.load(tv_weights, weights_only=True)
    assert head_classes(TV_MODEL, state, (3, 32, 32)) == 3


def test_a_head_that_does_not_match_the_datas_classes_names_both_numbers(tmp_path, tv_weights):
    four = write_image_folder(tmp_path / "four", classes=("cat", "dog", "fox", "owl"), per_class=5)
    with pytest.raises(InputError, match="head has 3 classes but .* has 4"):
        import_run(_config(tmp_path, tv_weights, four))
    assert not (tmp_path / "runs").exists()


def test_weights_of_another_architecture_name_the_first_missing_and_unexpected_keys(tmp_path, images):
    torch.save(build_model("resnet20", num_classes=3).state_dict(), tmp_path / "resnet20.pt")
    with pytest.raises(RunError, match=r"missing key\(s\), first 'features.0.0.weight'.*unexpected key\(s\), first 'conv1.weight'"):
        import_run(_config(tmp_path, tmp_path / "resnet20.pt", images))
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_kept_unless_forced(tmp_path, tv_weights, images):
    import_run(_config(tmp_path, tv_weights, images, test_size=3, train_size=3))
    with pytest.raises(OutputExistsError, match="--force"):
        import_run(_config(tmp_path, tv_weights, images))
    import_run(_config(tmp_path, tv_weights, images, force=True))
    assert load_run(tmp_path / "runs" / "mine").metrics["dense"]["test_n"] == 12
    leftovers = [p.name for p in (tmp_path / "runs").iterdir() if p.name != "mine"]
    assert leftovers == []


def test_an_unknown_model_name_suggests_the_nearest(tmp_path, tv_weights, images):
    with pytest.raises(InputError, match="did you mean .*mobilenet_v3_small"):
        import_run(_config(tmp_path, tv_weights, images, model="tv:mobilenet_v3_smal"))


def test_named_weights_only_exist_for_torchvision_and_must_be_real_names(tmp_path, images):
    with pytest.raises(InputError, match="not found"):
        import_run(_config(tmp_path, "IMAGENET1K_V1", images, model="resnet20"))
    with pytest.raises(InputError, match="has no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        import_run(_config(tmp_path, "IMAGENET9K", images))


def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, tv_weights, images):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no CUDA GPU"):
        import_run(_config(tmp_path, tv_weights, images, device="cuda"))
    assert not (tmp_path / "runs").exists()


def test_cli_import_from_safetensors_prints_the_accuracy(tmp_path, tv_weights, images):
    state = {k: v.contiguous() for k, v in torch.load(tv_weights, weights_only=True).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    result = CliRunner().invoke(main, ["import", "--model", TV_MODEL, "--weights", str(tmp_path / "model.safetensors"),
                                       "--data", f"folder:{images}", "--run", str(tmp_path / "run"),
                                       "--input-size", "32"])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"{100 * metrics['dense']['test_accuracy']:.2f}%" in result.output


@pytest.mark.parametrize("make_bad, message", [
    (lambda d: write_image_folder(d / "one", classes=("cat",)), "at least 2"),
    (lambda d: (d / "empty" / "cat").mkdir(parents=True) or d / "empty", "no images found"),
])
def test_cli_bad_image_folders_are_one_line_and_leave_no_run(tmp_path, tv_weights, make_bad, message):
    folder = make_bad(tmp_path)
    result = CliRunner().invoke(main, ["import", "--model", TV_MODEL, "--weights", str(tv_weights),
                                       "--data", f"folder:{folder}", "--run", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_an_unreadable_image_is_named_not_skipped(tmp_path, tv_weights):
    folder = write_train_val(tmp_path / "images")
    (folder / "val" / "dog" / "2.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"cannot read image .*dog/2\.png"):
        import_run(_config(tmp_path, tv_weights, folder))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_timm_training_checkpoint_imports_and_exports_with_its_measured_accuracy(tmp_path, images):
    pytest.importorskip("timm", reason="timm:NAME needs the timm extra")
    torch.manual_seed(2)
    model = build_model("timm:mobilenetv3_small_050", num_classes=3, input_shape=(3, 32, 32))
    checkpoint = {"epoch": 40, "arch": "mobilenetv3_small_050",
                  "model": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "checkpoint.pth.tar")
    runner = CliRunner()
    imported = runner.invoke(main, ["import", "--model", "timm:mobilenetv3_small_050", "--weights",
                                    str(tmp_path / "checkpoint.pth.tar"), "--data", f"folder:{images}",
                                    "--run", str(tmp_path / "runs" / "timm"), "--input-size", "32"])
    assert imported.exit_code == 0, imported.output
    spec = json.loads((tmp_path / "runs" / "timm" / "run.json").read_text())
    assert spec["imported"]["found_under"] == "checkpoint['model']"
    assert spec["preprocess"]["source"] == "flags" and spec["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    exported = runner.invoke(main, ["export", "--run", str(tmp_path / "runs" / "timm"), "--keep", "0.5",
                                    "--criterion", "magnitude", "--finetune-epochs", "1", "--bench-seconds", "0.2",
                                    "-o", str(tmp_path / "dist")])
    assert exported.exit_code == 0, exported.output
    accuracy = json.loads((tmp_path / "runs" / "timm" / "metrics.json").read_text())["dense"]["test_accuracy"]
    manifest = json.loads((tmp_path / "dist" / "timm-keep0.50" / "manifest.json").read_text())
    assert manifest["accuracy_before"] == accuracy
    assert manifest["model"]["spec"] == "timm:mobilenetv3_small_050"


def test_timm_preprocessing_comes_from_its_pretrained_config(tmp_path, images):
    pytest.importorskip("timm", reason="timm:NAME needs the timm extra")
    model = build_model("timm:mobilenetv3_small_050", num_classes=3, input_shape=(3, 32, 32))
    torch.save({"state_dict_ema": model.state_dict()}, tmp_path / "ema.pth")
    result = import_run(_config(tmp_path, tmp_path / "ema.pth", images, model="timm:mobilenetv3_small_050",
                                input_size=None, train_size=2, test_size=2))
    assert result.preprocess.source == "timm" and result.preprocess.input_size == 224
    assert result.weights_source.endswith("ema.pth")


def test_named_torchvision_weights_offline_say_which_file_to_fetch(tmp_path, images, monkeypatch):
    import urllib.error

    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(InputError, match=r"cannot download torchvision weights .*IMAGENET1K_V1.*https://.*--weights"):
        import_run(_config(tmp_path, "IMAGENET1K_V1", images))
    assert not (tmp_path / "runs").exists()
