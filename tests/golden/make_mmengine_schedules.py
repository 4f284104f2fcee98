"""Golden learning rates of MMEngine's parameter schedulers, as MMPose's configs combine them (tests/test_schedule.py).

Run with the MMPose reference venv (``../shared/tools/mmpose-reference-env.sh DIR``):

    DIR/bin/python tests/golden/make_mmengine_schedules.py

For each case it drives MMEngine's schedulers the way its runner does (iteration-based ones step after every
iteration, epoch-based ones after every epoch) and records the learning rate each optimizer step used, in
tests/golden/mmengine_schedules.json:

- ``step``: SimpleBaseline/HRNet: LinearLR warm-up (start_factor 0.001, 7 iterations) and MultiStepLR by epoch
  (milestones [5, 8], gamma 0.1) over 10 epochs of 4 iterations.
- ``flat_cosine``: RTMPose: LinearLR warm-up (start_factor 1e-5, 6 iterations), then CosineAnnealingLR from epoch 5
  to 12 (eta_min = 0.05 x the base rate), converted to iterations, over 12 epochs of 3 iterations.
"""

import json
from pathlib import Path

import torch
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR, MultiStepLR

BASE_LR = 4e-3


def rates(make, epochs: int, per_epoch: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    schedulers = make(optimizer, per_epoch)
    used = []
    for _ in range(epochs):
        for _ in range(per_epoch):
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()
    return used


def step_schedule(optimizer, per_epoch):
    return [LinearLR(optimizer, start_factor=0.001, by_epoch=False, begin=0, end=7),
            MultiStepLR(optimizer, milestones=[5, 8], gamma=0.1, by_epoch=True, begin=0, end=10)]


def flat_cosine(optimizer, per_epoch):
    return [LinearLR(optimizer, start_factor=1e-5, by_epoch=False, begin=0, end=6),
            CosineAnnealingLR.build_iter_from_epoch(optimizer, eta_min=BASE_LR * 0.05, begin=5, end=12, T_max=7,
                                                    by_epoch=True, epoch_length=per_epoch)]


if __name__ == "__main__":
    golden = {"base_lr": BASE_LR,
              "step": {"epochs": 10, "per_epoch": 4, "lr": rates(step_schedule, 10, 4)},
              "flat_cosine": {"epochs": 12, "per_epoch": 3, "lr": rates(flat_cosine, 12, 3)}}
    path = Path(__file__).with_name("mmengine_schedules.json")
    path.write_text(json.dumps(golden, indent=1) + "\n")
    print("wrote", path)
