"""Written with cbam at commit 865a312 (checkpoint format 1), before the one-checkpoint-module change."""
import sys, shutil, torch
from pathlib import Path
sys.path.insert(0, "tests")
from engine.conftest import write_image_folder, tiny_config
from detection.conftest import write_coco_folder
from cbam.engine.train import fit
from cbam.detection.config import build_detect_config, SMALL_INPUT_KWARGS
from cbam.detection.engine import fit_detector

out = Path("tests/checkpoints_v1"); tmp = Path("/tmp/v1gen"); shutil.rmtree(tmp, ignore_errors=True)
data = write_image_folder(tmp / "data", classes=3, train=8, val=3)
cfg = tiny_config(data, tmp / "cls", epochs=1, attention="cbam", model_kwargs={"widen_factor": 0.125})
fit(cfg)
# the data folder is recorded as an absolute path; keep it relative-free: tests give --data
shutil.copy(tmp / "cls/last.pt", out / "classification-v1.pt")
shutil.copy(tmp / "cls/last.safetensors", out / "classification-v1.safetensors")
coco = write_coco_folder(tmp / "squares", train=4, val=2)
dcfg = build_detect_config(None, data=str(coco), output=str(tmp / "det"), detector="faster_rcnn_c4", backbone="resnet18",
    attention="cbam", detector_kwargs={**SMALL_INPUT_KWARGS["faster_rcnn_c4"]}, epochs=1, batch_size=2, workers=0,
    optimizer="adamw", lr=1e-3, warmup_iterations=1)
fit_detector(dcfg)
state = torch.load(tmp / "det/last.pt", weights_only=True)
# weights and optimizer left out (45 MB of ResNet-18); the test puts a fresh detector's weights back
state["model"] = {}; state["optimizer"] = {}
torch.save(state, out / "detection-v1-no-weights.pt")
