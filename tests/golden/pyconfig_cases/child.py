"""Every construct posecore's reader evaluates, and MMEngine's merge rules (golden: make_mmpose_configs.py)."""
_base_ = ['base_model.py', './base_runtime.py']

max_epochs = 210
model = dict(backbone=dict(depth=101), head=dict(_delete_=True, channels=[32]))  # merged; head replaced
alias = model  # the same dict, but MMEngine copies each value before merging: alias keeps _delete_
fresh = dict(_delete_=True, x=1)  # in no base: MMEngine keeps the key
hooks = dict(checkpoint=dict(interval=10, save_best='coco/AP'))  # merged two bases deep
schedule = dict(
    max_epochs=max_epochs, milestones=[max_epochs - 40, max_epochs - 10], half=max_epochs // 2, ratio=max_epochs / 4)
heatmap = tuple([s // 4 for s in _base_.size])
scaled = [s * 2**2 for s in _base_['size']]
pairs = [(i, i + 1) for i in range(3)] + [(a, b) for a, b in [(7, 8)]]
nested = [x * y for x in range(1, 3) for y in (10, 100)]
name = f'run-{max_epochs}-{_base_.size[0]:05d}-{"x"!r}'
prefix = 'data/' 'coco/'
path = prefix + 'annotations/train.json'
mixed = [*_base_.size, 1.5, -3, +4, 7 / 2, 7 % 4, 2**-1, None, True]
inherited = _base_.model.backbone.depth
tail = _base_['schedule']['milestones'][1:]
reversed_size = _base_.size[::-1]
extra = dict(dict(a=1), b=2, **dict(c=3))
from_pairs = dict([('k', 'v')])
table = {'x': 1, 2: 'two', **{'y': 2}}
spans = list(range(3)) + list(range(1, 10, 4)) + list('ab') + list()
repeated = [0] * 3 + ['-'] * 2
pipeline = [dict(type='Load')]  # a list replaces the base's
a = b = 5
_private = 'kept'
__dunder = 'dropped'
